#ifndef TAILOR_FUSION_STITCH_STREAM_H_
#define TAILOR_FUSION_STITCH_STREAM_H_

// Stitching task patches (Stitch(), merge_methods.h) one chunk of elements
// at a time: the streaming form FusionJob uses when every task of a tailor
// or magnitude job is a patch (issue #11).

#include <ATen/core/ScalarType.h>

#include <cstdint>
#include <optional>
#include <vector>

#include "absl/functional/function_ref.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "fusion/merge_methods.h"
#include "fusion/patch.h"
#include "io/checkpoint.h"

namespace tailor {

struct StitchStreamResult {
  int64_t kept = 0;                // set entries of the stitched mask
  std::vector<int64_t> task_kept;  // per task: its patch's kept count (or 0)
  // With pack_stitched: the stitched entry, byte for byte what
  // PatchWriter::Pack(mask, delta) gives on the whole merged tensor. It is
  // built as the chunks go (ceil(n / 8) mask bytes plus 4 bytes per kept
  // entry): bounded by the keep fraction, not by a chunk.
  std::optional<PackedPatchEntry> stitched;
};

// Fuses base tensor `info` (a stored dtype LibTorch has, at least one
// element) with the task patches `patches` (one per task, in task order;
// null for a task whose patch lacks the tensor, which contributes nothing)
// in consecutive chunks of `chunk_elements`: per chunk the base read in
// `compute` (float32 or float64), each task's mask and delta decoded
// (PatchEntryStream), Stitch() with `aggregation` (one task: its mask and
// delta as they are), FuseTensor() and the stored dtype -- all elementwise,
// so the bytes `sink` receives, in order, are the whole-tensor path's. A
// NaN/Inf pre-trained value is refused at its chunk (CheckFiniteTensor's
// message), a bad patch entry before the first chunk.
absl::StatusOr<StitchStreamResult> StreamStitchedTensor(
    const Checkpoint& base, const TensorInfo& info,
    const std::vector<const PatchFile*>& patches, Aggregation aggregation,
    at::ScalarType compute, int64_t chunk_elements, bool pack_stitched,
    absl::FunctionRef<absl::Status(absl::string_view)> sink);

}  // namespace tailor

#endif  // TAILOR_FUSION_STITCH_STREAM_H_
