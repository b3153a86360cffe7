#include "fusion/calibration.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <optional>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "util/file_util.h"
#include "util/json_util.h"
#include "util/quote.h"
#include "util/status_macros.h"
#include "util/torch_status.h"

namespace tailor {
namespace {

constexpr char kHessianSuffix[] = ".hessian";
constexpr char kWeightSuffix[] = ".weight";
// Relative tolerance of the symmetry check.
constexpr double kSymmetryTolerance = 1e-4;
// Rows per block in Load()'s checks: bounds the temporaries to a few rows
// of a (possibly 11008 x 11008) matrix.
constexpr int64_t kCheckBlockRows = 512;

// nsamples: one or more ASCII digits (no sign, exponent, space or suffix),
// value in [1, INT64_MAX].
std::optional<int64_t> ParseNsamples(absl::string_view text) {
  if (text.empty() ||
      !std::all_of(text.begin(), text.end(), absl::ascii_isdigit)) {
    return std::nullopt;
  }
  int64_t n = 0;
  if (!absl::SimpleAtoi(text, &n) || n <= 0) return std::nullopt;
  return n;
}

}  // namespace

absl::StatusOr<std::unique_ptr<CalibrationFile>> CalibrationFile::Open(
    const std::string& path, const Checkpoint::Options& options) {
  auto error = [&](absl::string_view message) {
    return absl::InvalidArgumentError(
        absl::StrCat("calibration file ", path, ": ", message));
  };
  std::unique_ptr<CalibrationFile> calib(new CalibrationFile());
  TAILOR_ASSIGN_OR_RETURN(
      calib->file_,
      OpenFormattedFile(path, options, "calibration file", kHessianFormat));
  const SafetensorsHeader& header = calib->file_->files()[0]->header();
  const std::map<std::string, std::string>& md = header.metadata;
  auto nsamples = md.find("nsamples");
  if (nsamples == md.end()) {
    return error(
        "__metadata__ lacks 'nsamples' (the number of calibration "
        "samples, a positive decimal integer)");
  }
  std::optional<int64_t> n = ParseNsamples(nsamples->second);
  if (!n.has_value()) {
    return error(
        absl::StrCat("__metadata__ nsamples = ", Quote(nsamples->second),
                     " is not a positive decimal integer (digits "
                     "only, no sign or exponent)"));
  }
  calib->nsamples_ = *n;

  for (const TensorEntry& e : header.tensors) {
    if (!absl::EndsWith(e.name, kHessianSuffix)) {
      return error(absl::StrCat("key ", Quote(e.name), " does not end with ",
                                Quote(kHessianSuffix),
                                " (keys are weight names with '.weight' "
                                "replaced by '.hessian')"));
    }
    if (e.dtype != DType::kF32) {
      return error(absl::StrCat("key ", Quote(e.name), " is ",
                                DTypeName(e.dtype), "; Hessians must be F32"));
    }
    if (e.shape.size() != 2 || e.shape[0] != e.shape[1]) {
      return error(
          absl::StrCat("key ", Quote(e.name), " has shape ",
                       c10::str(at::IntArrayRef(e.shape)),
                       "; a Hessian must be a square 2-D matrix (c x c)"));
    }
  }

  auto aliases = md.find("aliases");
  if (aliases != md.end()) {
    TAILOR_ASSIGN_OR_RETURN(
        nlohmann::json json,
        ParseJsonStrict(
            aliases->second,
            absl::StrCat("calibration file ", path, ": __metadata__ aliases")));
    if (!json.is_object()) {
      return error(
          "__metadata__ aliases must be a JSON object {weight name: "
          "hessian key}");
    }
    for (auto it = json.begin(); it != json.end(); ++it) {
      if (!it.value().is_string()) {
        return error(absl::StrCat("alias ", Quote(it.key()),
                                  " must map to a string (a hessian key)"));
      }
      const std::string& target = it.value().get_ref<const std::string&>();
      if (!absl::EndsWith(it.key(), kWeightSuffix)) {
        return error(absl::StrCat("alias source ", Quote(it.key()),
                                  " is not a weight name (must end with ",
                                  Quote(kWeightSuffix), ")"));
      }
      if (header.Find(target) == nullptr) {
        return error(absl::StrCat("alias ", Quote(it.key()), " -> ",
                                  Quote(target),
                                  " names a key the file does not hold"));
      }
      calib->aliases_.emplace(it.key(), target);
    }
  }
  return calib;
}

std::optional<std::string> CalibrationFile::KeyFor(
    absl::string_view weight_name) const {
  auto alias = aliases_.find(std::string(weight_name));
  if (alias != aliases_.end()) return alias->second;
  if (!absl::EndsWith(weight_name, kWeightSuffix)) return std::nullopt;
  std::string key = absl::StrCat(
      weight_name.substr(0, weight_name.size() - strlen(kWeightSuffix)),
      kHessianSuffix);
  if (file_->Find(key) == nullptr) return std::nullopt;
  return key;
}

absl::StatusOr<at::Tensor> CalibrationFile::Load(absl::string_view key) const {
  ReadOptions options;
  options.floating_dtype = at::kFloat;
  TAILOR_ASSIGN_OR_RETURN(at::Tensor h, file_->Read(key, options));
  const std::string label =
      absl::StrCat("calibration file ", path(), ": key ", Quote(key));
  // Blockwise, so the temporaries stay a few rows of the matrix.
  struct Check {
    bool finite = true;
    double max_abs = 0;
    double max_asym = 0;
  };
  TAILOR_ASSIGN_OR_RETURN(
      Check check, CatchTorch(label, [&] {
        Check c;
        const int64_t rows = h.size(0);
        for (int64_t r = 0; r < rows && c.finite; r += kCheckBlockRows) {
          const int64_t len = std::min(kCheckBlockRows, rows - r);
          const at::Tensor block = h.narrow(0, r, len);
          if (!at::isfinite(block).all().item<bool>()) {
            c.finite = false;
            break;
          }
          if (block.numel() == 0) continue;
          c.max_abs = std::max(c.max_abs, block.abs().max().item<double>());
          const at::Tensor mirror = h.narrow(1, r, len).t();
          c.max_asym =
              std::max(c.max_asym, (block - mirror).abs().max().item<double>());
        }
        return c;
      }));
  if (!check.finite) {
    return absl::InvalidArgumentError(absl::StrCat(
        label, ": holds NaN or infinite entries; a Hessian must be finite"));
  }
  if (check.max_asym > kSymmetryTolerance * check.max_abs) {
    return absl::InvalidArgumentError(absl::StrCat(
        label, ": is not symmetric: max |H - H^T| = ", check.max_asym,
        " exceeds 1e-4 * max|H| = ", kSymmetryTolerance * check.max_abs));
  }
  return h;
}

void PreparedHessianCache::Expect(int task, const std::string& key,
                                  int64_t position) {
  absl::MutexLock lock(&mu_);
  users_[{task, key}].insert(position);
}

absl::StatusOr<PreparedHessianCache::Entry> PreparedHessianCache::Acquire(
    int task, const std::string& key, const at::Device& device,
    const Loader& load, const TailorOptions& options) {
  const Id id = std::make_tuple(task, key, device.str());
  {
    absl::MutexLock lock(&mu_);
    // Another worker preparing this id: wait for its result.
    auto not_preparing = [&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
      return preparing_.count(id) == 0;
    };
    mu_.Await(absl::Condition(&not_preparing));
    auto it = live_.find(id);
    if (it != live_.end()) return it->second;
    preparing_.insert(id);
  }
  // Prepared without the lock: other keys prepare concurrently.
  auto prepare = [&]() -> absl::StatusOr<Entry> {
    TAILOR_ASSIGN_OR_RETURN(at::Tensor raw, load());
    TAILOR_ASSIGN_OR_RETURN(at::Tensor on_device,
                            CatchTorch(key, [&] { return raw.to(device); }));
    raw = at::Tensor();
    return std::make_shared<const absl::StatusOr<PreparedHessian>>(
        PrepareHessian(on_device, options));
  };
  absl::StatusOr<Entry> entry = prepare();
  absl::MutexLock lock(&mu_);
  preparing_.erase(id);
  if (!entry.ok()) return entry.status();  // not cached: the loader failed
  ++preparations_;
  // Only an entry someone still expects is kept.
  auto users = users_.find({task, key});
  if (users != users_.end() && !users->second.empty())
    live_.emplace(id, *entry);
  return *entry;
}

void PreparedHessianCache::Finished(int64_t position) {
  absl::MutexLock lock(&mu_);
  for (auto& [key, positions] : users_) positions.erase(position);
  for (auto it = live_.begin(); it != live_.end();) {
    auto users = users_.find({std::get<0>(it->first), std::get<1>(it->first)});
    if (users == users_.end() || users->second.empty()) {
      it = live_.erase(it);
    } else {
      ++it;
    }
  }
}

int64_t PreparedHessianCache::LiveBytes() const {
  absl::MutexLock lock(&mu_);
  int64_t bytes = 0;
  for (const auto& [id, entry] : live_) {
    if (entry->ok()) bytes += (*entry)->bytes();
  }
  return bytes;
}

bool PreparedHessianCache::IsLive(int task, const std::string& key) const {
  absl::MutexLock lock(&mu_);
  for (const auto& [id, entry] : live_) {
    if (std::get<0>(id) == task && std::get<1>(id) == key) return true;
  }
  return false;
}

int64_t PreparedHessianCache::LiveBytesOf(int task,
                                          const std::string& key) const {
  absl::MutexLock lock(&mu_);
  int64_t bytes = 0;
  for (const auto& [id, entry] : live_) {
    if (std::get<0>(id) == task && std::get<1>(id) == key && entry->ok()) {
      bytes += (*entry)->bytes();
    }
  }
  return bytes;
}

int64_t PreparedHessianCache::preparations() const {
  absl::MutexLock lock(&mu_);
  return preparations_;
}

}  // namespace tailor
