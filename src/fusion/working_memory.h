#ifndef TAILOR_FUSION_WORKING_MEMORY_H_
#define TAILOR_FUSION_WORKING_MEMORY_H_

// The working-memory estimate of one fused tensor (what a device lease
// reserves for it, and what the job executor's host memory bound counts).

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "fusion/calibration.h"
#include "fusion/fusion_spec.h"
#include "io/tensor_source.h"

namespace tailor {

// What the estimate needs of each task of a job, in task order.
struct WorkingMemoryTask {
  // The tensor's Hessian key in the task's calibration file, if it has one.
  std::optional<std::string> hessian_key;
  TailorOptions options;
};

// An upper estimate of FuseOne's peak working memory for `info`, bytes,
// with e = 4 (float32 compute) or 8 (tailor.float64), n elements, T tasks:
//   pre-trained tensor, merged delta and fused output:     3 n e
//   per task: fine-tuned tensor (or patch values), delta, the kernel's
//     scores / normalisation / compensated-copy temporaries (4 n e), and
//     the mask and delta kept for merging:                 (7 e + 1) n
//   merging several tasks (stitch, TIES, DARE temporaries): 2 n e
//   a calibrated r x c tensor (tailor method): the prepared Hessians
//     cached now in `hessians` (for this tensor's key or others still to be
//     used), those of its tasks not yet prepared (damped H and U, 2 c^2 e
//     each; they stay cached for the key's aliases) plus, if any is, one
//     preparation's scratch (3 c^2 e) beyond the kernel temporaries
//     (4 n e) that exist only after it, plus the exact compensation's
//     chunk (exact_chunk_bytes).
// The kernels' real peak is lower (several temporaries die before others
// are made); erring high only makes tensors wait, never over-commit.
//
// `concurrent` (a job with several workers): tensors computing at once
// would each count every live Hessian, including those the others hold,
// and a tensor could be refused as never fitting for what is only
// transient. So each counts its own tasks' Hessians instead (the live
// entries' bytes, else 2 c^2 e each) plus the scratch and chunk above. The
// entries cached for aliases still to come that no running tensor uses
// (one per such key) are then counted by nobody.
int64_t EstimateWorkingBytes(const FusionSpec& spec, const TensorInfo& info,
                             const std::vector<WorkingMemoryTask>& tasks,
                             const PreparedHessianCache& hessians,
                             bool concurrent = false);

// The same for a tensor FusionJob streams (StreamOne's task arithmetic,
// DARE, magnitude, TIES and SPIDER, not stitched patches, on the CPU with
// stream_chunk_elements > 0), which holds buffers of c = min(max(
// chunk_elements, 1), n) elements, not the tensor: with s bytes per stored
// element,
//   stored bytes of the base, of each task and of the output:  (T + 2) c s
//   pre-trained and each task's delta in the compute type:     (T + 1) c e
//   the fused float32 chunk, float32 views of pre and delta
//     (float64 compute), the mask, the selection keys:        (13 + e) c
//   a chunk's tensor-op temporaries (a chunk holding a
//     non-finite value, other stored dtypes):                 4 c e
// plus, for magnitude and TIES, each task's selection state: the radix
// histogram (2^16 counters of 8 bytes), the sample and the window's
// candidate budget (TopKWindow, e bytes a key). Nothing more: a tensor
// holding a NaN/Inf input or an overflowing delta stays in its chunks
// (streamed_merge.h), it is never computed whole.
// REQUIRES: chunk_elements > 0 (at 0 or below nothing streams: use
// EstimateWorkingBytes).
int64_t EstimateStreamedWorkingBytes(const FusionSpec& spec,
                                     const TensorInfo& info, int64_t tasks,
                                     int64_t chunk_elements);

}  // namespace tailor

#endif  // TAILOR_FUSION_WORKING_MEMORY_H_
