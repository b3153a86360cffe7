// The engine side of the job manager: the one translation unit of the job
// service that sees LibTorch (through fusion_job.h).

#include <ATen/Context.h>
#include <unistd.h>

#include <fstream>

#ifdef TAILOR_WITH_CUDA
#include <cuda_runtime_api.h>
#endif

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "fusion/fusion_job.h"
#include "jobs/job_runner.h"
#include "storage/uri_resolver.h"
#include "util/file_util.h"
#include "util/status_macros.h"

namespace tailor::jobs {
namespace {

// The first integer in file `path`, or 0 (missing, "max", unreadable).
int64_t ReadLimit(const char* path) {
  std::ifstream in(path);
  int64_t value = 0;
  if (!(in >> value) || value <= 0) return 0;
  return value;
}

// Physical RAM, or the process's cgroup memory limit (v2, else v1) when that
// is lower (a container); 0 if unknown.
int64_t HostMemoryBytes() {
  const long pages = ::sysconf(_SC_PHYS_PAGES);
  const long page = ::sysconf(_SC_PAGESIZE);
  int64_t bytes =
      pages > 0 && page > 0 ? static_cast<int64_t>(pages) * page : 0;
  for (const char* path : {"/sys/fs/cgroup/memory.max",
                           "/sys/fs/cgroup/memory/memory.limit_in_bytes"}) {
    const int64_t limit = ReadLimit(path);
    if (limit > 0 && (bytes == 0 || limit < bytes)) bytes = limit;
  }
  return bytes;
}

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
      // An input that is a FIFO or a device would block or never end when
      // the job opens it: refused now (stat only, which cannot block).
      const absl::Status s = !path.ok() ? path.status()
                             : output   ? absl::OkStatus()
                                        : CheckFileOrDirectory(*path);
      if (s.ok()) return absl::OkStatus();
      return absl::Status(s.code(), absl::StrCat(field, ": ", s.message()));
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
};

}  // namespace

absl::StatusOr<std::unique_ptr<JobRunner>> NewFusionJobRunner(
    const std::vector<std::string>& allowed_roots) {
  TAILOR_ASSIGN_OR_RETURN(UriResolver resolver,
                          UriResolver::Create(allowed_roots));
  return std::unique_ptr<JobRunner>(new FusionJobRunner(std::move(resolver)));
}

}  // namespace tailor::jobs
