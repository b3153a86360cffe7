// The helpers of fusion_run_support.h.

#include "fusion/fusion_run_support.h"

#include <stdlib.h>

#include <cmath>

#include "fusion/patch.h"
#include "util/file_util.h"
#include "util/staged_output.h"
#include "util/status_macros.h"

namespace tailor {
namespace fusion_internal {

namespace {

// {file basename: fingerprint(file)} over the checkpoint's files.
absl::StatusOr<nlohmann::json> PerFile(
    const Checkpoint& ckpt,
    absl::StatusOr<std::string> (*fingerprint)(const SafetensorsFile&)) {
  nlohmann::json files = nlohmann::json::object();
  for (const auto& f : ckpt.files()) {
    TAILOR_ASSIGN_OR_RETURN(std::string sha, fingerprint(*f));
    files[Basename(f->path())] = sha;
  }
  return files;
}

}  // namespace

absl::StatusOr<nlohmann::json> Fingerprints(const Checkpoint& ckpt) {
  return PerFile(ckpt, &HeaderFingerprint);
}

absl::StatusOr<nlohmann::json> DataFingerprints(const Checkpoint& ckpt) {
  return PerFile(ckpt, &DataFingerprint);
}

std::string CanonicalOr(const std::string& path) {
  char* real = ::realpath(path.c_str(), nullptr);
  if (real == nullptr) return path;
  std::string out(real);
  ::free(real);
  return out;
}

void AddInputFiles(const Checkpoint& ckpt, const std::string& field,
                   OutputPlan* plan) {
  for (const auto& f : ckpt.files()) {
    plan->inputs.push_back({field, CanonicalOr(f->path()), false});
  }
}

void CleanStaleStaging(const OutputPlan& plan) {
  for (const auto& [dir, names] : StagingDirs(plan)) {
    (void)RemoveStaleStaging(dir, names);
  }
}

nlohmann::json FusedReportEntry(const TensorInfo& info, int64_t kept,
                                const nlohmann::json& per_task) {
  return {{"name", info.name},
          {"action", "fused"},
          {"shape", info.shape},
          {"dtype", std::string(DTypeName(info.dtype))},
          {"count", info.numel},
          {"kept", kept},
          {"kept_fraction",
           info.numel ? static_cast<double>(kept) / info.numel : 0.0},
          {"tasks", per_task}};
}

nlohmann::json NumberOrNull(double v) {
  return std::isfinite(v) ? nlohmann::json(v) : nlohmann::json(nullptr);
}

}  // namespace fusion_internal
}  // namespace tailor
