#ifndef TAILOR_FUSION_FUSION_JOB_H_
#define TAILOR_FUSION_FUSION_JOB_H_

#include <string>

#include "absl/status/statusor.h"
#include "fusion/fusion_spec.h"
#include "fusion/run_options.h"
#include "nlohmann/json.hpp"
#include "storage/uri_resolver.h"

namespace tailor {

// Runs a fusion job in-process: validates the spec, opens and validates
// every input, plans per-tensor work (include/exclude, pairing, mismatch
// policy), then streams the base checkpoint tensor by tensor -- at most a
// few tensors resident -- computing each task's mask and delta, merging
// them, and writing the fused tensor, the stitched patch and (with several
// tasks) one patch per task. Outputs are published only when every tensor
// succeeded: patches, then the fused checkpoint, then the report. Returns
// the report (also written to spec.report_uri when set).
//
// Changes no process-wide state (thread pools, allocator): the caller's
// binary sizes them (ConfigureComputeThreads, util/cpu_tuning.h; the
// streaming allocator, util/memory.h: tailorctl fuse and tailord's main).
//
// The steps of a run are FusionRun's (fusion_run.h); ApplyPatch, which
// rebuilds a fused checkpoint from a patch, is in apply_patch.h.
//
// Per-task patches go next to the stitched patch as
// "<patch stem>.<label>.safetensors" when there are several tasks.
absl::StatusOr<nlohmann::json> RunFusionJob(const FusionSpec& spec,
                                            const UriResolver& resolver,
                                            const RunOptions& options = {});

}  // namespace tailor

#endif  // TAILOR_FUSION_FUSION_JOB_H_
