#include "fusion/calibration.h"

#include <ATen/ATen.h>

#include <memory>
#include <tuple>

#include "util/status_macros.h"
#include "util/torch_status.h"

namespace tailor {

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
