#ifndef TAILOR_JOBS_DEVICE_POOL_H_
#define TAILOR_JOBS_DEVICE_POOL_H_

// The devices fusion work runs on, each with a memory budget. Torch-free:
// the engine sees a pool only through TensorDeviceScheduler (fusion/run_options.h).

#include <atomic>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "fusion/run_options.h"

namespace tailor::jobs {

struct PoolDevice {
  std::string name;    // unique in the pool: "cpu", "cuda:0", ...
  std::string torch;   // what the engine runs on: "cpu" or "cuda:N"
  std::string label;   // metrics label: "cpu", or a CUDA device's GPU UUID
  int64_t budget = 0;  // bytes that leases on it may reserve at once, > 0
};

// A memory budget as configured: absolute bytes or a fraction of the
// device's total memory.
struct DeviceBudget {
  int64_t bytes = 0;    // used when fraction == 0
  double fraction = 0;  // in (0, 1]
  // The budget for a device with `total` bytes of memory.
  int64_t For(int64_t total) const {
    return fraction > 0 ? static_cast<int64_t>(fraction * total) : bytes;
  }
};

// Parses "DEVICE=VALUE" where DEVICE is cpu, cuda (every CUDA device) or
// cuda:N, and VALUE is bytes with an optional K/M/G/T (powers of 1000) or
// Ki/Mi/Gi/Ti (powers of 1024) suffix, or a fraction in (0, 1] of the
// device's memory ("0.5"). INVALID_ARGUMENT stating the rule.
absl::StatusOr<std::pair<std::string, DeviceBudget>> ParseDeviceBudget(
    absl::string_view text);

// Hands out per-tensor memory reservations on a fixed set of devices.
// Thread-safe: every method may be called from any thread.
class DevicePool {
 public:
  // A reservation; releases its bytes (and wakes waiters) when destroyed.
  // Must not outlive the pool.
  class Lease : public DeviceLease {
   public:
    ~Lease() override;
    std::string device() const override;  // the torch device string
    std::string name() const override;    // the pool device's name
    int index() const { return index_; }
    int64_t bytes() const { return bytes_; }

   private:
    friend class DevicePool;
    Lease(DevicePool* pool, int index, int64_t bytes)
        : pool_(pool), index_(index), bytes_(bytes) {}
    DevicePool* const pool_;
    const int index_;
    const int64_t bytes_;
  };

  // Names must be unique and budgets positive (INVALID_ARGUMENT otherwise).
  static absl::StatusOr<std::unique_ptr<DevicePool>> Create(
      std::vector<PoolDevice> devices);

  const std::vector<PoolDevice>& devices() const { return devices_; }

  // The indices of the devices a job's `device` setting permits: "cpu",
  // "cuda" (every CUDA device), "cuda:N", or "auto": every CUDA device when
  // the pool has one, else the CPU -- a job never mixes CPU and CUDA
  // results unless asked to by name. FAILED_PRECONDITION when no pool
  // device matches; INVALID_ARGUMENT for another string.
  absl::StatusOr<std::vector<int>> Permitted(
      const std::string& preference) const;

  // Reserves `bytes` (>= 0) on one of the `allowed` devices for tensor
  // `tensor`, blocking until one has that much budget free; picks the
  // allowed device with the most free budget (ties: the lowest index).
  // RESOURCE_EXHAUSTED at once if `bytes` exceeds every allowed device's
  // whole budget; CANCELLED once `*cancel` (optional) becomes true while
  // waiting (checked at least every `poll`).
  absl::StatusOr<std::unique_ptr<Lease>> Reserve(
      const std::vector<int>& allowed, const std::string& tensor, int64_t bytes,
      const std::atomic<bool>* cancel = nullptr,
      absl::Duration poll = absl::Milliseconds(20));

  // Bytes reserved now on device `index`.
  int64_t Reserved(int index) const;

 private:
  explicit DevicePool(std::vector<PoolDevice> devices);
  void Release(int index, int64_t bytes);
  // The allowed device with the most free budget that fits `bytes`, or -1.
  int Pick(const std::vector<int>& allowed, int64_t bytes) const
      ABSL_SHARED_LOCKS_REQUIRED(mu_);

  const std::vector<PoolDevice> devices_;
  mutable absl::Mutex mu_;  // guards reserved_; released leases signal it
  std::vector<int64_t> reserved_ ABSL_GUARDED_BY(mu_);  // by device index
};

// A TensorDeviceScheduler for one job: reserves on `allowed` devices of
// `pool`, giving up when `cancel` (optional) becomes true.
class PoolScheduler : public TensorDeviceScheduler {
 public:
  PoolScheduler(DevicePool* pool, std::vector<int> allowed,
                const std::atomic<bool>* cancel)
      : pool_(pool), allowed_(std::move(allowed)), cancel_(cancel) {}
  absl::StatusOr<std::unique_ptr<DeviceLease>> Acquire(
      const std::string& tensor, int64_t estimated_bytes) override;

 private:
  DevicePool* const pool_;
  const std::vector<int> allowed_;
  const std::atomic<bool>* const cancel_;
};

}  // namespace tailor::jobs

#endif  // TAILOR_JOBS_DEVICE_POOL_H_
