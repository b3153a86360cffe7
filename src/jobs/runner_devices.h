#ifndef TAILOR_JOBS_RUNNER_DEVICES_H_
#define TAILOR_JOBS_RUNNER_DEVICES_H_

// The job manager's device pool, built from its runner's devices and the
// configured memory budgets (JobManagerOptions::device_budgets).

#include <map>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "jobs/device_pool.h"
#include "jobs/job_runner.h"

namespace tailor::jobs {

// A device's budget when device_budgets names neither it nor its kind: this
// fraction of its memory.
inline constexpr double kDefaultCpuBudget = 0.5;
inline constexpr double kDefaultCudaBudget = 0.9;

// A pool of runner.Devices(), each with the budget of `budgets` by its name
// ("cuda:1"), else by its kind ("cpu", "cuda"), else the default fraction.
// Logs each device's budget, and warns of keys naming no device here.
// INVALID_ARGUMENT naming "device-memory-budget" when a device would get no
// memory (a fraction of an unknown size, or 0 bytes).
absl::StatusOr<std::unique_ptr<DevicePool>> NewDevicePool(
    const JobRunner& runner,
    const std::map<std::string, DeviceBudget>& budgets);

}  // namespace tailor::jobs

#endif  // TAILOR_JOBS_RUNNER_DEVICES_H_
