#ifndef TAILOR_FUSION_APPLY_PATCH_H_
#define TAILOR_FUSION_APPLY_PATCH_H_

#include <cstdint>
#include <string>

#include "absl/status/status.h"
#include "storage/uri_resolver.h"

namespace tailor {

// Rebuilds a fused checkpoint from a base checkpoint and a patch: for every
// patched tensor FuseTensor(pre, mask, values) in the base dtype, every other
// tensor copied byte for byte; the base's layout and non-tensor files.
// Patched tensors stream in chunks of `stream_chunk_elements` elements
// (StreamPatchedTensor, patch_stream.h: working memory a few chunks, not the
// tensor), copied ones in pieces of as many float32s; 0 handles each tensor
// whole (a test hook: the same bytes).
//
// Changes no process-wide state: the caller's binary picks the allocator
// policy (ConfigureAllocatorForStreaming, util/memory.h, keeps peak RSS flat
// over many tensors; tailorctl apply-patch does so).
absl::Status ApplyPatch(const std::string& pretrained_uri,
                        const std::string& patch_uri,
                        const std::string& output_uri, bool overwrite,
                        const UriResolver& resolver,
                        int64_t stream_chunk_elements = int64_t{1} << 18);

}  // namespace tailor

#endif  // TAILOR_FUSION_APPLY_PATCH_H_
