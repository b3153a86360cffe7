#include "jobs/device_pool.h"

#include <algorithm>
#include <cmath>
#include <set>
#include <utility>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/strip.h"

namespace tailor::jobs {
namespace {

bool IsCuda(const PoolDevice& d) { return absl::StartsWith(d.torch, "cuda"); }

bool ValidDeviceName(absl::string_view name) {
  if (name == "cpu" || name == "cuda") return true;
  if (!absl::ConsumePrefix(&name, "cuda:")) return false;
  int index = 0;
  return absl::SimpleAtoi(name, &index) && index >= 0 && index <= 1024 &&
         absl::StrCat(index) == name;
}

}  // namespace

absl::StatusOr<std::pair<std::string, DeviceBudget>> ParseDeviceBudget(
    absl::string_view text) {
  const auto bad = [&](absl::string_view why) {
    return absl::InvalidArgumentError(absl::StrCat(
        "'", text, "': ", why,
        " (DEVICE=BYTES with an optional K, M, G, T, Ki, Mi, Gi or Ti "
        "suffix, or DEVICE=FRACTION in (0, 1]; DEVICE is cpu, cuda or "
        "cuda:N)"));
  };
  const size_t eq = text.find('=');
  if (eq == absl::string_view::npos) return bad("no '='");
  const std::string device(absl::StripAsciiWhitespace(text.substr(0, eq)));
  absl::string_view value = absl::StripAsciiWhitespace(text.substr(eq + 1));
  if (!ValidDeviceName(device)) return bad("unknown device");
  DeviceBudget budget;
  if (absl::StrContains(value, '.')) {
    double f = 0;
    if (!absl::SimpleAtod(value, &f) || !(f > 0 && f <= 1)) {
      return bad("a fraction must be in (0, 1]");
    }
    budget.fraction = f;
    return std::make_pair(device, budget);
  }
  static const std::pair<const char*, double> kSuffixes[] = {
      {"Ki", 1024.0},
      {"Mi", 1024.0 * 1024},
      {"Gi", 1024.0 * 1024 * 1024},
      {"Ti", 1099511627776.0},
      {"K", 1e3},
      {"M", 1e6},
      {"G", 1e9},
      {"T", 1e12}};
  double scale = 1;
  for (const auto& [suffix, factor] : kSuffixes) {
    if (absl::ConsumeSuffix(&value, suffix)) {
      scale = factor;
      break;
    }
  }
  int64_t n = 0;
  if (!absl::SimpleAtoi(value, &n) || n <= 0) {
    return bad("bytes must be a positive integer");
  }
  const double bytes = static_cast<double>(n) * scale;
  if (bytes >= 9.2e18) return bad("too large");
  budget.bytes = static_cast<int64_t>(bytes);
  return std::make_pair(device, budget);
}

DevicePool::Lease::~Lease() { pool_->Release(index_, bytes_); }

std::string DevicePool::Lease::device() const {
  return pool_->devices_[index_].torch;
}

std::string DevicePool::Lease::name() const {
  return pool_->devices_[index_].name;
}

absl::StatusOr<std::unique_ptr<DevicePool>> DevicePool::Create(
    std::vector<PoolDevice> devices) {
  if (devices.empty()) {
    return absl::InvalidArgumentError("device pool: no devices");
  }
  std::set<std::string> names;
  for (const PoolDevice& d : devices) {
    if (!names.insert(d.name).second) {
      return absl::InvalidArgumentError(
          absl::StrCat("device pool: device '", d.name, "' given twice"));
    }
    if (d.budget <= 0) {
      return absl::InvalidArgumentError(
          absl::StrCat("device pool: device '", d.name,
                       "' has no memory budget (", d.budget, " bytes)"));
    }
  }
  return std::unique_ptr<DevicePool>(new DevicePool(std::move(devices)));
}

DevicePool::DevicePool(std::vector<PoolDevice> devices)
    : devices_(std::move(devices)), reserved_(devices_.size(), 0) {}

absl::StatusOr<std::vector<int>> DevicePool::Permitted(
    const std::string& preference) const {
  if (preference != "auto" && preference != "cpu" && preference != "cuda" &&
      !absl::StartsWith(preference, "cuda:")) {
    return absl::InvalidArgumentError(absl::StrCat(
        "bad device '", preference, "': must be auto, cpu, cuda or cuda:N"));
  }
  const bool any_cuda = std::any_of(devices_.begin(), devices_.end(), IsCuda);
  std::vector<int> out;
  for (int i = 0; i < static_cast<int>(devices_.size()); ++i) {
    const PoolDevice& d = devices_[i];
    const bool match = preference == "auto"   ? IsCuda(d) == any_cuda
                       : preference == "cuda" ? IsCuda(d)
                                              : d.torch == preference;
    if (match) out.push_back(i);
  }
  if (out.empty()) {
    std::vector<std::string> names;
    for (const PoolDevice& d : devices_) names.push_back(d.name);
    return absl::FailedPreconditionError(absl::StrCat(
        "device '", preference, "' is not in this server's device pool (",
        absl::StrJoin(names, ", "), ")"));
  }
  return out;
}

int DevicePool::Pick(const std::vector<int>& allowed, int64_t bytes) const {
  int best = -1;
  int64_t best_free = -1;
  for (int i : allowed) {
    const int64_t free = devices_[i].budget - reserved_[i];
    if (free >= bytes &&
        (free > best_free || (free == best_free && i < best))) {
      best = i;
      best_free = free;
    }
  }
  return best;
}

absl::StatusOr<std::unique_ptr<DevicePool::Lease>> DevicePool::Reserve(
    const std::vector<int>& allowed, const std::string& tensor, int64_t bytes,
    const std::atomic<bool>* cancel, absl::Duration poll) {
  if (allowed.empty()) {
    return absl::FailedPreconditionError("no device permitted");
  }
  bytes = std::max<int64_t>(bytes, 0);
  bool fits_somewhere = false;
  std::vector<std::string> budgets;
  for (int i : allowed) {
    fits_somewhere |= bytes <= devices_[i].budget;
    budgets.push_back(absl::StrCat(devices_[i].name, ": ", devices_[i].budget));
  }
  if (!fits_somewhere) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "tensor '", tensor, "' needs an estimated ", bytes,
        " bytes of working memory, more than the whole memory budget of "
        "every device it may use (",
        absl::StrJoin(budgets, ", "),
        " bytes); raise --device-memory-budget or exclude the tensor"));
  }
  int picked = -1;
  auto ready = [&]() {
    mu_.AssertReaderHeld();  // Await runs its condition with mu_ held
    picked = Pick(allowed, bytes);
    return picked >= 0 || (cancel != nullptr && cancel->load());
  };
  absl::MutexLock lock(&mu_);
  while (!mu_.AwaitWithTimeout(absl::Condition(&ready), poll)) {
  }
  if (picked < 0) {
    return absl::CancelledError(absl::StrCat(
        "stopped while waiting for device memory for tensor '", tensor, "'"));
  }
  reserved_[picked] += bytes;
  return std::unique_ptr<Lease>(new Lease(this, picked, bytes));
}

void DevicePool::Release(int index, int64_t bytes) {
  absl::MutexLock lock(&mu_);
  reserved_[index] -= bytes;
}

int64_t DevicePool::Reserved(int index) const {
  absl::ReaderMutexLock lock(&mu_);
  return reserved_[index];
}

absl::StatusOr<std::unique_ptr<DeviceLease>> PoolScheduler::Acquire(
    const std::string& tensor, int64_t estimated_bytes) {
  absl::StatusOr<std::unique_ptr<DevicePool::Lease>> lease =
      pool_->Reserve(allowed_, tensor, estimated_bytes, cancel_);
  if (!lease.ok()) return lease.status();
  return std::unique_ptr<DeviceLease>(std::move(*lease));
}

}  // namespace tailor::jobs
