#include "jobs/runner_devices.h"

#include <set>
#include <utility>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "util/field_error.h"
#include "util/log.h"

namespace tailor::jobs {

absl::StatusOr<std::unique_ptr<DevicePool>> NewDevicePool(
    const JobRunner& runner,
    const std::map<std::string, DeviceBudget>& budgets) {
  std::vector<PoolDevice> devices;
  std::set<std::string> used;
  for (const RunnerDevice& d : runner.Devices()) {
    const bool cuda = absl::StartsWith(d.name, "cuda");
    DeviceBudget b;
    b.fraction = cuda ? kDefaultCudaBudget : kDefaultCpuBudget;
    for (const std::string& key :
         {std::string(cuda ? "cuda" : "cpu"), d.name}) {
      auto it = budgets.find(key);
      if (it == budgets.end()) continue;
      b = it->second;
      used.insert(key);
    }
    const int64_t budget = b.For(d.memory_bytes);
    if (budget <= 0) {
      return FieldError(
          "device-memory-budget",
          absl::StrCat("device ", d.name,
                       b.fraction > 0 && d.memory_bytes <= 0
                           ? " has an unknown memory size; give its budget "
                             "in bytes (e.g. "
                           : " gets no memory; give a budget (e.g. ",
                       d.name, "=8Gi)"));
    }
    devices.push_back({d.name, d.name, d.label, budget});
    Log(LogLevel::kInfo, "",
        absl::StrCat("device ", d.name, " (", d.label, "): memory budget ",
                     budget, " bytes"));
  }
  for (const auto& [key, b] : budgets) {
    if (used.count(key) == 0 && key != "cuda") {
      Log(LogLevel::kWarning, "",
          absl::StrCat("device-memory-budget: no device ", key,
                       " here; ignored"));
    }
  }
  return DevicePool::Create(std::move(devices));
}

}  // namespace tailor::jobs
