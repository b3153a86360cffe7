#ifndef TAILOR_FUSION_FUSION_RUN_SUPPORT_H_
#define TAILOR_FUSION_FUSION_RUN_SUPPORT_H_

// Small helpers shared by the parts of a fusion run (fusion_run.h) and by
// ApplyPatch (apply_patch.h): input fingerprints, plan inputs and the report
// row of a fused tensor (timing: util/stopwatch.h). Internal to the fusion
// library.

#include <cstdint>
#include <string>

#include "absl/status/statusor.h"
#include "fusion/output_plan.h"
#include "io/checkpoint.h"
#include "nlohmann/json.hpp"
#include "util/stopwatch.h"

namespace tailor {
namespace fusion_internal {

// Per-file header fingerprints of a checkpoint-like source.
absl::StatusOr<nlohmann::json> Fingerprints(const Checkpoint& ckpt);

// Per-file sampled data fingerprints (DataFingerprint) of the base.
absl::StatusOr<nlohmann::json> DataFingerprints(const Checkpoint& ckpt);

// realpath(3) of `path`, or `path` itself if it cannot be resolved.
std::string CanonicalOr(const std::string& path);

// Every file an open checkpoint really reads (shards resolved through
// symlinks, e.g. into a Hugging Face cache), as plan inputs.
void AddInputFiles(const Checkpoint& ckpt, const std::string& field,
                   OutputPlan* plan);

// Removes stale staging entries of the plan's outputs (a writer killed
// before it could clean up; issue #10 point 17).
void CleanStaleStaging(const OutputPlan& plan);

// `v`, or null when it is not finite (JSON has no NaN or Inf).
nlohmann::json NumberOrNull(double v);

// A fused tensor's report row (FuseOne and the streamed paths alike); the
// caller adds "seconds".
nlohmann::json FusedReportEntry(const TensorInfo& info, int64_t kept,
                                const nlohmann::json& per_task);

}  // namespace fusion_internal
}  // namespace tailor

#endif  // TAILOR_FUSION_FUSION_RUN_SUPPORT_H_
