#ifndef TAILOR_FUSION_FUSION_JOB_H_
#define TAILOR_FUSION_FUSION_JOB_H_

#include <string>

#include "absl/status/statusor.h"
#include "fusion/fusion_spec.h"
#include "fusion/progress.h"
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
// Calls ConfigureAllocatorForStreaming() (util/memory.h) so that memory stays
// flat over many tensors.
//
// Per-task patches go next to the stitched patch as
// "<patch stem>.<label>.safetensors" when there are several tasks.
absl::StatusOr<nlohmann::json> RunFusionJob(const FusionSpec& spec,
                                            const UriResolver& resolver,
                                            const RunOptions& options = {});

// Rebuilds a fused checkpoint from a base checkpoint and a patch: for every
// patched tensor FuseTensor(pre, mask, values) in the base dtype, every other
// tensor copied byte for byte; the base's layout and non-tensor files.
// Patched tensors stream in chunks of `stream_chunk_elements` elements
// (StreamPatchedTensor, patch_stream.h: working memory a few chunks, not the
// tensor), copied ones in pieces of as many float32s; 0 handles each tensor
// whole (a test hook: the same bytes).
absl::Status ApplyPatch(const std::string& pretrained_uri,
                        const std::string& patch_uri,
                        const std::string& output_uri, bool overwrite,
                        const UriResolver& resolver,
                        int64_t stream_chunk_elements = int64_t{1} << 18);

}  // namespace tailor

#endif  // TAILOR_FUSION_FUSION_JOB_H_
