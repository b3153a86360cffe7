#ifndef TAILOR_JOBS_JOB_RUNNER_H_
#define TAILOR_JOBS_JOB_RUNNER_H_

#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "fusion/run_options.h"
#include "nlohmann/json.hpp"

namespace tailor::jobs {

// A device the engine can compute on.
struct RunnerDevice {
  std::string name;  // "cpu" or "cuda:N", as util/device.h reads it
  // The metrics label: "cpu", or the CUDA device's GPU UUID ("GPU-...")
  // where this build can read it, else its name.
  std::string label;
  int64_t memory_bytes = 0;  // physical RAM / device memory; 0 if unknown
};

// What the job manager needs from the engine, behind a torch-free
// interface: checking a spec and running it. Implementations must be
// thread-safe (several jobs run at once).
class JobRunner {
 public:
  virtual ~JobRunner() = default;

  // Checks a spec (JSON in FusionSpec::FromJson's form) without running it:
  // every field and rule (INVALID_ARGUMENT naming the field), every input URI
  // exists (NOT_FOUND) and every URI lies inside the allowed roots
  // (PERMISSION_DENIED), and the outputs' plan (fusion/output_plan.h: no
  // overlap with inputs, each other, a root or the data directory). Returns
  // the canonical spec: defaults filled in.
  virtual absl::StatusOr<nlohmann::json> Prepare(
      const nlohmann::json& spec) const = 0;

  // Prepare(), and every URI also lies inside `roots` (a principal's own
  // allowed roots, Caller::allowed_roots), with the same output rules
  // against them: PERMISSION_DENIED naming the field otherwise.
  virtual absl::StatusOr<nlohmann::json> PrepareWithin(
      const nlohmann::json& /*spec*/,
      const std::vector<std::string>& /*roots*/) const {
    return absl::UnimplementedError(
        "per-principal allowed roots are not supported by this runner");
  }

  // Runs a spec returned by Prepare(); returns the engine's report.
  // Publishes outputs only on success.
  virtual absl::StatusOr<nlohmann::json> Run(const nlohmann::json& spec,
                                             const RunOptions& options) = 0;

  // The local path of an output URI of a spec (for serving results).
  virtual absl::StatusOr<std::string> ResolveOutput(
      const std::string& uri) const = 0;

  // The canonical local paths `spec` writes, as (field, path) pairs (the
  // job manager refuses a job whose outputs overlap an active job's). Empty
  // when they cannot be resolved.
  virtual std::vector<std::pair<std::string, std::string>> OutputPaths(
      const nlohmann::json& /*spec*/) const {
    return {};
  }

  // Removes stale staging entries (of writers that died, e.g. SIGKILLed)
  // beside the outputs of `spec`; never anything else. Returns how many.
  virtual int CleanStaging(const nlohmann::json& /*spec*/) const { return 0; }

  // The devices jobs may run on (the job manager's device pool is built
  // from them): the CPU first, then each CUDA device LibTorch sees.
  virtual std::vector<RunnerDevice> Devices() const = 0;
};

// The engine-backed runner: NewFusionJobRunner (jobs/fusion_job_runner.h).

}  // namespace tailor::jobs

#endif  // TAILOR_JOBS_JOB_RUNNER_H_
