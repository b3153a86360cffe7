// The engine side of the job manager: the one translation unit of the job
// service that sees LibTorch (through fusion_job.h).

#include <ATen/Context.h>

#ifdef TAILOR_WITH_CUDA
#include <cuda_runtime_api.h>
#endif

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "fusion/fusion_job.h"
#include "fusion/output_plan.h"
#include "jobs/fusion_job_runner.h"
#include "jobs/proc_stats.h"
#include "storage/uri_resolver.h"
#include "util/staged_output.h"
#include "util/status_macros.h"

namespace tailor::jobs {
namespace {

class FusionJobRunner : public JobRunner {
 public:
  FusionJobRunner(UriResolver resolver,
                  std::vector<std::string> protected_paths,
                  UriResolver::Remote remote)
      : resolver_(std::move(resolver)),
        protected_paths_(std::move(protected_paths)),
        remote_(std::move(remote)) {}

  absl::StatusOr<nlohmann::json> Prepare(
      const nlohmann::json& json) const override {
    TAILOR_ASSIGN_OR_RETURN(FusionSpec spec, FusionSpec::FromJson(json));
    TAILOR_RETURN_IF_ERROR(spec.Validate());
    // Every URI must resolve (inputs exist, outputs may not), errors naming
    // the field; then the output plan's rules (issue #10): no output is or
    // contains an allowed root, touches the data directory, overlaps an
    // input or another output, or is of the wrong kind.
    TAILOR_ASSIGN_OR_RETURN(OutputPlan plan,
                            ResolveOutputPlan(spec, resolver_));
    TAILOR_RETURN_IF_ERROR(CheckOutputPlan(plan, resolver_));
    return spec.ToJson(/*with_overwrite=*/true);
  }

  absl::StatusOr<nlohmann::json> PrepareWithin(
      const nlohmann::json& json,
      const std::vector<std::string>& roots) const override {
    TAILOR_ASSIGN_OR_RETURN(nlohmann::json canonical, Prepare(json));
    // The same checks against the principal's roots: a URI must lie inside
    // both the server's roots and the caller's.
    absl::StatusOr<UriResolver> mine =
        UriResolver::Create(roots, protected_paths_, remote_);
    if (!mine.ok()) {
      return absl::FailedPreconditionError(
          absl::StrCat("the caller's allowed roots (token file) are unusable: ",
                       mine.status().message()));
    }
    TAILOR_ASSIGN_OR_RETURN(FusionSpec spec, FusionSpec::FromJson(canonical));
    TAILOR_ASSIGN_OR_RETURN(OutputPlan plan, ResolveOutputPlan(spec, *mine));
    TAILOR_RETURN_IF_ERROR(CheckOutputPlan(plan, *mine));
    return canonical;
  }

  absl::StatusOr<nlohmann::json> Run(const nlohmann::json& json,
                                     const RunOptions& options) override {
    TAILOR_ASSIGN_OR_RETURN(FusionSpec spec, FusionSpec::FromJson(json));
    // Missing parent directories of the outputs are created (beneath their
    // allowed root); an existing output is refused again by the staged
    // outputs, for races since the job was created.
    TAILOR_ASSIGN_OR_RETURN(
        OutputPlan plan,
        ResolveOutputPlan(spec, resolver_, /*with_inputs=*/false));
    TAILOR_RETURN_IF_ERROR(MakeOutputParents(plan, resolver_));
    return RunFusionJob(spec, resolver_, options);
  }

  absl::StatusOr<std::string> ResolveOutput(
      const std::string& uri) const override {
    return resolver_.ResolveExisting(uri);
  }

  std::vector<std::pair<std::string, std::string>> OutputPaths(
      const nlohmann::json& json) const override {
    std::vector<std::pair<std::string, std::string>> paths;
    absl::StatusOr<FusionSpec> spec = FusionSpec::FromJson(json);
    if (!spec.ok()) return paths;
    absl::StatusOr<OutputPlan> plan =
        ResolveOutputPlan(*spec, resolver_, /*with_inputs=*/false);
    if (!plan.ok()) return paths;
    for (const OutputPlan::Entry& o : plan->outputs) {
      paths.emplace_back(o.field, o.path);
    }
    return paths;
  }

  int CleanStaging(const nlohmann::json& json) const override {
    absl::StatusOr<FusionSpec> spec = FusionSpec::FromJson(json);
    if (!spec.ok()) return 0;
    absl::StatusOr<OutputPlan> plan =
        ResolveOutputPlan(*spec, resolver_, /*with_inputs=*/false);
    if (!plan.ok()) return 0;
    int removed = 0;
    for (const auto& [dir, names] : StagingDirs(*plan)) {
      removed += RemoveStaleStaging(dir, names);
    }
    return removed;
  }

  std::vector<RunnerDevice> Devices() const override {
    std::vector<RunnerDevice> devices;
    devices.push_back({"cpu", "cpu", HostMemoryBytes()});
    if (!at::hasCUDA()) return devices;
    const int n = static_cast<int>(at::getNumGPUs());
    for (int i = 0; i < n; ++i) {
      RunnerDevice d;
      d.name = absl::StrCat("cuda:", i);
      d.label = d.name;
#ifdef TAILOR_WITH_CUDA
      // The CUDA runtime (a CUDA build of LibTorch found at configure
      // time): the GPU UUID as nvidia-smi prints it, and the memory size.
      cudaDeviceProp prop;
      if (cudaGetDeviceProperties(&prop, i) == cudaSuccess) {
        const auto* u = reinterpret_cast<const unsigned char*>(prop.uuid.bytes);
        d.label = absl::StrFormat(
            "GPU-%02x%02x%02x%02x-%02x%02x-%02x%02x-%02x%02x-"
            "%02x%02x%02x%02x%02x%02x",
            u[0], u[1], u[2], u[3], u[4], u[5], u[6], u[7], u[8], u[9], u[10],
            u[11], u[12], u[13], u[14], u[15]);
        d.memory_bytes = static_cast<int64_t>(prop.totalGlobalMem);
      }
#endif
      devices.push_back(std::move(d));
    }
    return devices;
  }

 private:
  const UriResolver resolver_;
  const std::vector<std::string> protected_paths_;
  const UriResolver::Remote remote_;
};

}  // namespace

absl::StatusOr<std::unique_ptr<JobRunner>> NewFusionJobRunner(
    const std::vector<std::string>& allowed_roots,
    const std::vector<std::string>& protected_paths,
    UriResolver::Remote remote) {
  TAILOR_ASSIGN_OR_RETURN(
      UriResolver resolver,
      UriResolver::Create(allowed_roots, protected_paths, remote));
  return std::unique_ptr<JobRunner>(new FusionJobRunner(
      std::move(resolver), protected_paths, std::move(remote)));
}

}  // namespace tailor::jobs
