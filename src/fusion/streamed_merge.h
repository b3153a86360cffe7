#ifndef TAILOR_FUSION_STREAMED_MERGE_H_
#define TAILOR_FUSION_STREAMED_MERGE_H_

#include <c10/core/ScalarType.h>

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "fusion/merge_methods.h"

namespace tailor {

class Checkpoint;

// The data-free merges that need tensor-wide statistics (a per-tensor top-k
// threshold, a mean and a standard deviation), streamed: each tensor is read
// in chunks several times (the statistics' passes, then the output pass)
// into buffers allocated once per tensor, so working memory is a few chunks,
// not the tensor. Every elementwise operation is that of the whole-tensor
// path (FusionJob's FuseOne: TailorLayerPrepared without a Hessian, Stitch,
// Ties, Spider, FuseTensor, ToStoredTensor) in the same order and compute
// type, and the selections are exact (streamed_top_k.h), so the fused bytes
// and the counts are identical to it.

// One tensor to stream.
struct StreamedTensor {
  std::string name;
  at::ScalarType stored = at::kFloat;  // the checkpoints' dtype
  int64_t numel = 0;                   // > 0
  uint64_t element_size = 0;           // bytes per stored element
  int64_t chunk = 1;                   // elements per chunk, >= 1
  const Checkpoint* base = nullptr;
  std::vector<const Checkpoint*> finetuned;  // one per task, >= 1
  bool float64 = false;                      // compute type double
};

enum class StreamedMethod { kMagnitude, kTies, kSpider };

struct StreamedMergeOptions {
  StreamedMethod method = StreamedMethod::kMagnitude;
  // Magnitude: each task's mask is the top round(keep_ratio[t] * n) of its
  // min-max normalised |D_t| over the whole tensor (Scope::kLayer,
  // Normalization::kMinMax); several tasks are stitched with `aggregation`.
  std::vector<double> keep_ratio;
  Aggregation aggregation = Aggregation::kMeanSelected;
  // TIES.
  double density = 0.2;
  double lambda = 1.0;
};

struct StreamedMergeResult {
  int64_t kept = 0;                // entries of the merged mask
  std::vector<int64_t> task_kept;  // magnitude: each task's mask count
  // Magnitude, per task: whether a kept delta is not finite (ft - pre of
  // finite inputs overflowed to +-Inf), where TailorLayerPrepared reports
  // the fallback "compensation produced non-finite values".
  std::vector<bool> task_nonfinite_kept;
};

// Streams `tensor` through `options.method`, handing the fused tensor's
// stored bytes to `write` chunk after chunk (in order; at least once on
// success). Non-finite values are handled as FuseOne does, without holding
// the tensor: a NaN or Inf input gets FuseOne's INVALID_ARGUMENT "<name>:
// pre-trained tensor contains NaN or Inf" (or "fine-tuned", the first input
// in that order holding one), found before anything is written; a delta of
// finite inputs that overflows to +-Inf gives the tensor ops' own bytes.
// Other errors: a read failure, or `write`'s.
absl::StatusOr<StreamedMergeResult> StreamThresholdMerge(
    const StreamedTensor& tensor, const StreamedMergeOptions& options,
    const std::function<absl::Status(absl::string_view)>& write);

}  // namespace tailor

#endif  // TAILOR_FUSION_STREAMED_MERGE_H_
