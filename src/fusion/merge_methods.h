#ifndef TAILOR_FUSION_MERGE_METHODS_H_
#define TAILOR_FUSION_MERGE_METHODS_H_

#include <ATen/core/Generator.h>
#include <ATen/core/Tensor.h>

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "fusion/aggregation.h"  // Aggregation, ParseAggregation

namespace tailor {

// One task's contribution to one tensor: a mask and a delta that is zero
// wherever the mask is false (both shaped like the weight; delta float32 or
// float64).
struct TaskDelta {
  at::Tensor mask;
  at::Tensor delta;
};

// The merged result for one tensor: fused = pre + delta on `mask` entries.
struct MergedDelta {
  at::Tensor mask;   // bool: entries the merge changes
  at::Tensor delta;  // zero wherever mask is false
};

// Union of the task masks; per entry, the aggregate of the deltas of the
// tasks that selected it: kMeanSelected divides by the number of selecting
// tasks, kMeanAll by the number of tasks (the paper's C_agg), kSum not at all.
// REQUIRES: at least one task; equal shapes.
MergedDelta Stitch(const std::vector<TaskDelta>& tasks,
                   Aggregation aggregation);

// The fused tensor of a patched weight: pre (any floating dtype) + values
// scattered at the set entries of mask, computed in float32; entries outside
// the mask are pre exactly (no -0/+0 change). Returns float32; the caller
// stores it in the base dtype. Fuse and apply-patch both go through it (or
// loops with its arithmetic), so applying a patch reproduces the fused
// checkpoint bit for bit.
at::Tensor FuseTensor(const at::Tensor& pre, const at::Tensor& mask,
                      const at::Tensor& values);

// The kept values of `delta` at `mask`, row-major, as float32 [k]: what a
// patch stores (patch.h) and FuseTensor adds.
at::Tensor KeptValues(const at::Tensor& mask, const at::Tensor& delta);

// --- Baselines: dense task vectors D_i = W_ft_i - W_pre in, merged out. ---

// Task arithmetic: lambda * sum_i D_i, on every entry where it is non-zero.
MergedDelta TaskArithmetic(const std::vector<at::Tensor>& deltas,
                           double lambda);

// TIES: trim each D_i to its top round(density * n) entries by |D_i| (ties to
// the lower index), elect per entry the sign of the sum of trimmed values,
// average the trimmed values that agree with it (disjoint mean), scale by
// lambda.
MergedDelta Ties(const std::vector<at::Tensor>& deltas, double density,
                 double lambda);

// DARE: drops each entry of each D_i with probability p, rescales survivors
// by 1/(1-p), then task arithmetic with lambda. The random draw depends only
// on (seed, tensor name, task index): the same on any thread count, device or
// tensor order (drawn on the CPU).
MergedDelta Dare(const std::vector<at::Tensor>& deltas, double drop,
                 double lambda, uint64_t seed, absl::string_view tensor_name);

// The seed of DARE's generator for task `task` of tensor `tensor_name`: a
// hash of the three, so the draw depends on nothing else. The mergekit
// family's random methods (mergekit_methods.h) draw from it too.
uint64_t DrawSeed(uint64_t seed, absl::string_view tensor_name, uint64_t task);

// TaskArithmetic and Dare over a tensor fed as consecutive flat chunks (in
// order, first to last), with no allocation per chunk beyond DARE's draw
// buffers: the streaming form FusionJob uses. Each chunk's result is bitwise
// what the whole-tensor function gives on those elements (DARE: each task's
// generator is drawn in the same order, element after element).
class ChunkedDenseMerge {
 public:
  static ChunkedDenseMerge TaskArithmetic(int64_t tasks, double lambda);
  static ChunkedDenseMerge Dare(int64_t tasks, double drop, double lambda,
                                uint64_t seed, absl::string_view tensor_name);

  // `deltas`: this chunk's D_i, one per task, equal-sized, contiguous, on
  // the CPU; they are overwritten, and the merged delta is left in
  // deltas[0].
  void Merge(std::vector<at::Tensor>& deltas);

 private:
  ChunkedDenseMerge() = default;
  bool dare_ = false;
  double lambda_ = 1;
  double drop_ = 0;
  std::vector<at::Generator> generators_;  // DARE: one per task
  at::Tensor draw_, dropped_;              // DARE: reused buffers
};

// SPIDER (post hoc): I = sigmoid(zscore(|W_pre|)), G = sigmoid(zscore(g))
// with g = `importance` when given (accumulated |gradient|), else |D|;
// M = G / (G + I) where G > I, else 0; M is rescaled by the mean of its
// non-zeros and capped at 1; delta = M * D. One task. The statistics (the
// z-scores' means and standard deviations, the mean of the non-zero M) are
// accumulated in float64 in flat index order and the elementwise steps
// computed in float64 (spider_kernel.h), M rounded to D's type before the
// product: the streamed merge (streamed_merge.h) gives the same bits.
MergedDelta Spider(const at::Tensor& w_pre, const at::Tensor& delta,
                   const at::Tensor& importance);

}  // namespace tailor

#endif  // TAILOR_FUSION_MERGE_METHODS_H_
