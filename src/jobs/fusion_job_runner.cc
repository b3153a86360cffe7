// The engine side of the job manager: the one translation unit of the job
// service that sees LibTorch (through fusion_job.h).

#include <ATen/Context.h>

#include "absl/strings/str_cat.h"
#include "fusion/fusion_job.h"
#include "jobs/job_runner.h"
#include "storage/uri_resolver.h"
#include "util/status_macros.h"

namespace tailor::jobs {
namespace {

class FusionJobRunner : public JobRunner {
 public:
  explicit FusionJobRunner(UriResolver resolver)
      : resolver_(std::move(resolver)) {}

  absl::StatusOr<nlohmann::json> Prepare(
      const nlohmann::json& json) const override {
    TAILOR_ASSIGN_OR_RETURN(FusionSpec spec, FusionSpec::FromJson(json));
    TAILOR_RETURN_IF_ERROR(spec.Validate());
    // An unset URI passes; a set one must resolve (as an input that
    // exists, or as an output location); errors name the field.
    auto check = [&](const std::string& field, const std::string& uri,
                     bool output) -> absl::Status {
      if (uri.empty()) return absl::OkStatus();
      absl::StatusOr<std::string> path = output
                                             ? resolver_.ResolveForWrite(uri)
                                             : resolver_.ResolveExisting(uri);
      if (path.ok()) return absl::OkStatus();
      return absl::Status(path.status().code(),
                          absl::StrCat(field, ": ", path.status().message()));
    };
    auto existing = [&](const std::string& field, const std::string& uri) {
      return check(field, uri, false);
    };
    auto writable = [&](const std::string& field, const std::string& uri) {
      return check(field, uri, true);
    };
    TAILOR_RETURN_IF_ERROR(existing("pretrained", spec.pretrained_uri));
    for (size_t i = 0; i < spec.tasks.size(); ++i) {
      const TaskSpec& t = spec.tasks[i];
      const std::string f = absl::StrCat("tasks[", i, "].");
      TAILOR_RETURN_IF_ERROR(existing(f + "finetuned", t.finetuned_uri));
      TAILOR_RETURN_IF_ERROR(existing(f + "patch", t.patch_uri));
      TAILOR_RETURN_IF_ERROR(existing(f + "hessians", t.hessian_uri));
    }
    TAILOR_RETURN_IF_ERROR(writable("out", spec.output_uri));
    TAILOR_RETURN_IF_ERROR(writable("patch_out", spec.patch_uri));
    TAILOR_RETURN_IF_ERROR(writable("report", spec.report_uri));
    nlohmann::json canonical = spec.ToJson();
    canonical["overwrite"] = spec.overwrite;
    return canonical;
  }

  absl::StatusOr<nlohmann::json> Run(const nlohmann::json& json,
                                     const RunOptions& options) override {
    TAILOR_ASSIGN_OR_RETURN(FusionSpec spec, FusionSpec::FromJson(json));
    return RunFusionJob(spec, resolver_, options);
  }

  absl::StatusOr<std::string> ResolveOutput(
      const std::string& uri) const override {
    return resolver_.ResolveExisting(uri);
  }

  std::string DeviceLabel(const nlohmann::json& spec) const override {
    // gpu_uuid needs the CUDA runtime, which this build may lack; the
    // device index names CUDA devices until the device pool lands.
    const std::string device = spec.value("device", "auto");
    if (device == "cpu" || (device == "auto" && !at::hasCUDA())) return "cpu";
    return device == "auto" ? "cuda:0" : device;
  }

 private:
  const UriResolver resolver_;
};

}  // namespace

absl::StatusOr<std::unique_ptr<JobRunner>> NewFusionJobRunner(
    const std::vector<std::string>& allowed_roots) {
  TAILOR_ASSIGN_OR_RETURN(UriResolver resolver,
                          UriResolver::Create(allowed_roots));
  return std::unique_ptr<JobRunner>(new FusionJobRunner(std::move(resolver)));
}

}  // namespace tailor::jobs
