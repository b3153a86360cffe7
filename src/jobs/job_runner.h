#ifndef TAILOR_JOBS_JOB_RUNNER_H_
#define TAILOR_JOBS_JOB_RUNNER_H_

#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "fusion/progress.h"
#include "nlohmann/json.hpp"

namespace tailor::jobs {

// What the job manager needs from the engine, behind a torch-free
// interface: checking a spec and running it. Implementations must be
// thread-safe (several jobs run at once).
class JobRunner {
 public:
  virtual ~JobRunner() = default;

  // Checks a spec (JSON in FusionSpec::FromJson's form) without running it:
  // every field and rule (INVALID_ARGUMENT naming the field), every input URI
  // exists (NOT_FOUND) and every URI lies inside the allowed roots
  // (PERMISSION_DENIED). Returns the canonical spec: defaults filled in.
  virtual absl::StatusOr<nlohmann::json> Prepare(
      const nlohmann::json& spec) const = 0;

  // Runs a spec returned by Prepare(); returns the engine's report.
  // Publishes outputs only on success.
  virtual absl::StatusOr<nlohmann::json> Run(const nlohmann::json& spec,
                                             const RunOptions& options) = 0;

  // The local path of an output URI of a spec (for serving results).
  virtual absl::StatusOr<std::string> ResolveOutput(
      const std::string& uri) const = 0;

  // The label the metrics use for where `spec` runs: "cpu", or a CUDA
  // device's identity.
  virtual std::string DeviceLabel(const nlohmann::json& spec) const = 0;
};

// The engine-backed runner (RunFusionJob) over URIs inside `allowed_roots`.
absl::StatusOr<std::unique_ptr<JobRunner>> NewFusionJobRunner(
    const std::vector<std::string>& allowed_roots);

}  // namespace tailor::jobs

#endif  // TAILOR_JOBS_JOB_RUNNER_H_
