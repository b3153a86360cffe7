#ifndef TAILOR_FUSION_MERGEKIT_METHODS_H_
#define TAILOR_FUSION_MERGEKIT_METHODS_H_

// The merge methods users know from mergekit (arcee-ai/mergekit,
// merge_methods/registry.py), per tensor, on dense task vectors
// D_i = W_ft_i - W_pre: linear, SLERP, DARE-TIES, breadcrumbs, DELLA, Model
// Stock, and task arithmetic / TIES with per-task weights and mergekit's
// count and sign-cancellation rules. Each follows the formula of its paper
// (cited at each function in mergekit_methods.cc) and mergekit's
// parameterisation; where the two differ, the choice is documented here.
//
// The elementwise ones (linear, SLERP, Model Stock, DARE-TIES, weighted task
// arithmetic) are ChunkedMergekit: a tensor fed as consecutive flat chunks,
// with a statistics pass first for SLERP (the norms of W_pre and W_ft and
// their dot product) and Model Stock (the task vectors' norms and pairwise
// dot products), accumulated in float64 in flat index order. The
// whole-tensor form (MergekitMerge) is the same class fed one chunk, so a
// streamed tensor has the same bytes. Breadcrumbs, DELLA and the
// generalised TIES rank |D| over the tensor (or its rows) and are computed
// whole.

#include <ATen/core/Generator.h>
#include <ATen/core/Tensor.h>

#include <cstdint>
#include <vector>

#include "absl/strings/string_view.h"
#include "fusion/fusion_spec.h"
#include "fusion/merge_methods.h"  // MergedDelta

namespace tailor {

// Everything the methods read, from a FusionSpec (MergekitParamsOf).
struct MergekitParams {
  Method method = Method::kLinear;
  std::vector<double> weights;  // w_i, one per task
  bool normalize = true;        // FusionSpec::NormalizeWeights()
  double lambda = 1;
  double t = 0.5;
  double density = 0.2;
  double drop = 0.9;
  double gamma = 0.01;
  double epsilon = 0.15;
  CountRule count_rule = CountRule::kRound;
  SignCancel sign_cancel = SignCancel::kZero;
  uint64_t seed = 0;
};
MergekitParams MergekitParamsOf(const FusionSpec& spec);

// Whether `method` is of the mergekit family (fusion_spec.h: kLinear ..
// kModelStock), which only this file computes.
bool IsMergekitMethod(Method method);

// Whether `spec` merges through this file: the mergekit-family methods, and
// task_arithmetic / ties given a task weight, normalize_weights or a
// non-default count_rule / sign_cancel (without any, they keep their own
// bit-exact paths in merge_methods.h and streamed_merge.h).
bool UsesMergekitPath(const FusionSpec& spec);
// Whether the method of such a spec is elementwise (ChunkedMergekit), so
// that a tensor can stream.
bool MergekitStreams(const FusionSpec& spec);

// The merged delta of one tensor: `pre` W_pre, `deltas` the D_i (equal
// shapes, float32 or float64, any device; random draws happen on the CPU
// and depend only on (seed, tensor name, task index), as DARE's).
// mask = delta != 0. REQUIRES: the params passed FusionSpec::Validate().
MergedDelta MergekitMerge(const MergekitParams& params, const at::Tensor& pre,
                          const std::vector<at::Tensor>& deltas,
                          absl::string_view tensor_name);

// The elementwise methods over a tensor fed as flat chunks, in order.
class ChunkedMergekit {
 public:
  // REQUIRES: MergekitStreams() for params' method.
  ChunkedMergekit(const MergekitParams& params, int64_t tasks,
                  absl::string_view tensor_name);

  // SLERP and Model Stock: the tensor must first be fed once, chunk after
  // chunk, to AddStatistics, then EndStatistics called.
  bool NeedsStatistics() const;
  // `pre`, `deltas`: this chunk's flat W_pre and D_i, contiguous, on the
  // CPU.
  void AddStatistics(const at::Tensor& pre,
                     const std::vector<at::Tensor>& deltas);
  void EndStatistics();

  // The merged delta of this chunk (the chunks in order, after the
  // statistics). `deltas` may be overwritten. CPU chunks; on another device
  // only as the whole tensor (MergekitMerge).
  at::Tensor Merge(const at::Tensor& pre, std::vector<at::Tensor>& deltas);

  // After EndStatistics: SLERP's coefficients (delta = a * pre + b * D) and
  // Model Stock's ratio t (delta = t * mean D), for reports and tests.
  double slerp_a() const { return slerp_a_; }
  double slerp_b() const { return slerp_b_; }
  double stock_ratio() const { return stock_ratio_; }

 private:
  MergekitParams p_;
  int64_t tasks_ = 0;
  std::vector<at::Generator> generators_;  // DARE-TIES: one per task
  std::vector<double> stats_;  // SLERP: |pre|^2, |ft|^2, pre.ft; Model
                               // Stock: |D_i|^2 then D_i.D_j (i < j)
  double slerp_a_ = 0, slerp_b_ = 1, stock_ratio_ = 1;
};

// TIES's sign election and disjoint merge, generalised as mergekit's
// GTATask: wr_i = w_i r_i; the elected sign s is sign(sum_i wr_i) (kZero:
// 0 where the sum is 0, which writes 0) or + where the sum is >= 0
// (kPositive); the mixed value is the sum of the wr_i whose sign is s,
// divided (normalize) by the sum of those tasks' w_i (left as is where that
// is 0), times lambda. With unit weights, normalize and kZero this is
// Ties()'s elect-and-mean, bit for bit.
at::Tensor ElectAndMerge(const std::vector<at::Tensor>& sparse,
                         const std::vector<double>& weights, bool normalize,
                         SignCancel cancel, double lambda);

// Breadcrumbs' mask of one task: |D| ranked over the tensor (ties to the
// lower flat index), the count(gamma * n) largest and the n - count(density
// * n) - count(gamma * n) smallest dropped (fewer large ones when that is
// negative, as mergekit); everything kept when density >= 1.
at::Tensor BreadcrumbsMask(const at::Tensor& delta, double density,
                           double gamma, CountRule rule);

// DELLA's keep probabilities of one task (float64, D's shape): per row (the
// first dimension; a 0-D or 1-D tensor is one row), the rank r of |D| in
// ascending order (ties to the lower index) gives p = density - epsilon +
// 2 epsilon r / (c - 1) for c > 1 entries in the row, density for c = 1.
at::Tensor DellaKeepProbabilities(const at::Tensor& delta, double density,
                                  double epsilon);

}  // namespace tailor

#endif  // TAILOR_FUSION_MERGEKIT_METHODS_H_
