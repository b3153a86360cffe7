#include "io/calibration_file.h"

#include <ATen/ATen.h>
#include <stdio.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cmath>
#include <cstring>
#include <limits>
#include <optional>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "io/checkpoint_writer.h"
#include "nlohmann/json.hpp"
#include "storage/uri_resolver.h"
#include "util/errno_status.h"
#include "util/file_util.h"
#include "util/json_util.h"
#include "util/quote.h"
#include "util/staged_output.h"
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

// The output directory of `path` (resolved by `resolver`) is not where it
// was: PERMISSION_DENIED if it now leads outside the allowed roots, else
// `why` (FAILED_PRECONDITION), both naming `path`.
absl::Status OutputMoved(const std::string& path, const absl::Status& why,
                         const UriResolver& resolver) {
  absl::Status where = resolver.CheckLocalPath(Dirname(path)).status();
  const absl::StatusCode code =
      where.code() == absl::StatusCode::kPermissionDenied
          ? where.code()
          : absl::StatusCode::kFailedPrecondition;
  return absl::Status(
      code,
      absl::StrCat("calibration output ", Quote(path),
                   ": the directory it was resolved in changed; "
                   "refusing to write there (",
                   code == absl::StatusCode::kPermissionDenied ? where.message()
                                                               : why.message(),
                   ")"));
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
  if (auto shard = md.find(kCalibrationShardKey); shard != md.end()) {
    TAILOR_ASSIGN_OR_RETURN(
        calib->shard_,
        ParseCalibrationShard(shard->second,
                              absl::StrCat("calibration file ", path)));
  }
  return calib;
}

std::optional<std::string> HessianKeyOf(absl::string_view weight_name) {
  if (!absl::EndsWith(weight_name, kWeightSuffix)) return std::nullopt;
  return absl::StrCat(
      weight_name.substr(0, weight_name.size() - strlen(kWeightSuffix)),
      kHessianSuffix);
}

std::optional<std::string> CalibrationFile::KeyFor(
    absl::string_view weight_name) const {
  auto alias = aliases_.find(std::string(weight_name));
  if (alias != aliases_.end()) return alias->second;
  std::optional<std::string> key = HessianKeyOf(weight_name);
  if (!key.has_value() || file_->Find(*key) == nullptr) return std::nullopt;
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

namespace {

// Copies all of `from` into the open file `to_fd` (labelled `to`).
absl::Status CopyInto(const std::string& from, int to_fd,
                      const std::string& to) {
  TAILOR_ASSIGN_OR_RETURN(ScopedFd in, OpenForRead(from));
  TAILOR_ASSIGN_OR_RETURN(uint64_t size, RegularFileSize(in.get(), from));
  std::string chunk;
  for (uint64_t offset = 0; offset < size; offset += chunk.size()) {
    chunk.resize(std::min<uint64_t>(uint64_t{8} << 20, size - offset));
    TAILOR_RETURN_IF_ERROR(
        PReadFully(in.get(), chunk.data(), chunk.size(), offset, from));
    TAILOR_RETURN_IF_ERROR(
        PWriteFully(to_fd, chunk.data(), chunk.size(), offset, to));
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status WriteCalibrationFile(
    const std::string& path, int64_t nsamples,
    const std::map<std::string, int64_t>& columns,
    const std::map<std::string, std::string>& aliases,
    const std::function<absl::StatusOr<at::Tensor>(const std::string& key)>&
        hessian,
    const UriResolver* resolver,
    const std::map<std::string, std::string>& extra_metadata) {
  if (IsRemoteUri(path)) {
    // Issue #16: written locally beside a remote output's staging file in
    // the resolver's scratch directory, copied into it, then uploaded and
    // committed as one object (never replacing one: ALREADY_EXISTS).
    TAILOR_ASSIGN_OR_RETURN(std::unique_ptr<StagedOutput> out,
                            CreateStagedOutput(path, StagedOutput::Kind::kFile,
                                               /*overwrite=*/false, resolver));
    const std::string local = absl::StrCat(out->staging_path(), ".local");
    absl::Status s =
        WriteCalibrationFile(local, nsamples, columns, aliases, hessian,
                             /*resolver=*/nullptr, extra_metadata);
    if (s.ok()) s = CopyInto(local, out->fd(), out->staging_path());
    (void)::unlink(local.c_str());
    TAILOR_RETURN_IF_ERROR(s);
    StagedOutput* const one[] = {out.get()};
    return PublishAll(one);
  }
  if (PathExists(path)) {
    return absl::AlreadyExistsError(
        absl::StrCat(path, " already exists; choose a new output path"));
  }
  std::vector<TensorInfo> layout;
  for (const auto& [key, c] : columns) {
    TensorInfo info;
    info.name = key;
    info.dtype = DType::kF32;
    info.shape = {c, c};
    info.numel = c * c;
    info.nbytes = static_cast<uint64_t>(info.numel) * sizeof(float);
    layout.push_back(std::move(info));
  }
  nlohmann::json alias_json = nlohmann::json::object();
  for (const auto& [weight, key] : aliases) alias_json[weight] = key;
  CheckpointWriterOptions options;
  options.max_shard_bytes = ~uint64_t{0};  // always one file
  options.metadata = {{"format", kHessianFormat},
                      {"nsamples", std::to_string(nsamples)},
                      {"aliases", alias_json.dump()}};
  for (const auto& [key, value] : extra_metadata) {
    options.metadata.emplace(key, value);
  }

  if (resolver != nullptr) {
    // The directory `path` was resolved in must still be reachable without
    // any symlink (issue #14 point 7) before anything is created there.
    absl::StatusOr<ScopedFd> parent = OpenDirectoryNoFollow(Dirname(path));
    if (!parent.ok()) return OutputMoved(path, parent.status(), *resolver);
  }
  // Staged as a directory (".<name>.tailor-stage-<pid>-<k>", created through
  // its parent's descriptor, opened without following symlinks, and locked
  // so a stale one is recognised) holding model.safetensors, which is then
  // renamed to `path` relative to that same parent descriptor, never
  // replacing anything. The staging directory goes with the writer.
  TAILOR_ASSIGN_OR_RETURN(std::unique_ptr<CheckpointWriter> writer,
                          CheckpointWriter::Create(path, layout, options));
  if (resolver != nullptr && writer->out_dir() != path) {
    return OutputMoved(
        path,
        absl::FailedPreconditionError(absl::StrCat(
            "its directory now resolves to ", Quote(Dirname(writer->out_dir())),
            " (a symbolic link swapped in?)")),
        *resolver);
  }
  for (const TensorInfo& info : layout) {
    TAILOR_ASSIGN_OR_RETURN(at::Tensor h, hessian(info.name));
    TAILOR_RETURN_IF_ERROR(writer->Write(info.name, h));
  }
  TAILOR_RETURN_IF_ERROR(writer->Stage());
  StagedOutput* const staged = writer->staged();
  TAILOR_RETURN_IF_ERROR(staged->CheckPublishable());
  const std::string name = Basename(writer->out_dir());
  if (::renameat2(staged->fd(), kSingleFileName, staged->parent_fd(),
                  name.c_str(), RENAME_NOREPLACE) != 0) {
    const int err = errno;
    if (err == EEXIST) {
      return absl::AlreadyExistsError(absl::StrCat(
          writer->out_dir(), " appeared while writing; not replacing it"));
    }
    return ErrnoError(err,
                      absl::StrCat("rename ", staged->staging_path(), "/",
                                   kSingleFileName, " -> ", writer->out_dir()));
  }
  if (::fsync(staged->parent_fd()) != 0) {
    return ErrnoError(errno,
                      absl::StrCat("fsync ", Dirname(writer->out_dir())));
  }
  return absl::OkStatus();
}

}  // namespace tailor
