#ifndef TAILOR_FUSION_TAILOR_KERNEL_H_
#define TAILOR_FUSION_TAILOR_KERNEL_H_

#include <ATen/core/Tensor.h>

#include <optional>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "fusion/layer_options.h"
// The kernel's building blocks, each in a file of its own (exposed for
// tests and benchmarks): callers of the kernel get them all from here.
#include "fusion/all_finite.h"          // CheckFiniteTensor
#include "fusion/exact_compensation.h"  // CompensateExact
#include "fusion/hessian_prep.h"        // PreparedHessian, PrepareHessian
#include "fusion/layer_error.h"         // ReconstructionError, MaskOnlyError
#include "fusion/obs_compensation.h"    // CompensateSequential, ...Blocks
#include "fusion/tailor_scores.h"       // KeepCount, FusedScores, SelectMask

namespace tailor {

// The per-layer Model Tailor kernel (src/DESIGN.md §2.1), device-generic: it
// runs wherever its input tensors live (CUDA or CPU) in float32 or float64.
// This file is the driver (checks, scores, mask, compensation, errors, in
// that order); Hessian preparation, scoring and selection, the OBS loop,
// exact compensation and the error yardstick are the headers above.

// What happened to one tensor.
struct LayerStats {
  int64_t count = 0;  // entries in the tensor
  int64_t kept = 0;   // entries selected (exactly the sum of per-scope k)
  bool has_hessian = false;
  // Compensation actually applied ("sequential", "exact" or "none").
  std::string compensation = "none";
  // Why compensation was skipped although asked for (empty if it was not).
  std::string fallback_reason;
  double damp = 0;
  // Columns with diag(H) == 0 (inputs zero on every calibration row), and
  // with DeadColumns::kRevert the non-zero deltas in them, reverted for
  // free (never kept; src/DESIGN.md §2.2).
  int64_t dead_columns = 0;
  int64_t dead_entries_reverted = 0;
  // E(D) = tr((D0 - D) H (D0 - D)^T) for the mask alone (D = D0 * M) and
  // after compensation; NaN without a Hessian. Sequential compensation's E
  // is ||Err||_F^2 of the OBS column errors (exact: D0 - D = Err U and
  // U H U^T = I), at no extra cost. The mask-only E costs an r x c x c GEMM,
  // so unless options.exact_errors it is estimated from kErrorSampleRows
  // evenly spaced rows, scaled by rows / sampled rows (exact when the tensor
  // has no more rows than that); the *_estimated flags say which. With
  // compensation "none" (or a fallback) both are the mask-only value.
  // Entries reverted for free in dead columns add 0 to both (their true H
  // row and column are zero), not D^2 through the fix-up H_jj = 1.
  double error_mask_only = 0;
  double error_compensated = 0;
  bool error_mask_only_estimated = false;
  bool error_compensated_estimated = false;
  double seconds = 0;
};

struct LayerResult {
  at::Tensor mask;   // bool, shape of W
  at::Tensor delta;  // kernel type, shape of W; zero wherever mask is false
  LayerStats stats;
};

// Runs Model Tailor on one tensor: D0 = w_ft - w_pre, scores, top-k mask,
// compensation. `hessian` (c x c for a 2-D r x c tensor) may be undefined:
// then selection is by salience alone (omega = 1) with no compensation, as
// for every tensor that is not 2-D. The fused tensor is w_pre + delta.
// Errors: INVALID_ARGUMENT naming `name` for NaN/Inf in any input, shape
// mismatches, or bad options.
absl::StatusOr<LayerResult> TailorLayer(absl::string_view name,
                                        const at::Tensor& w_pre,
                                        const at::Tensor& w_ft,
                                        const at::Tensor& hessian,
                                        const TailorOptions& options);

// The same with a Hessian prepared once for several tensors (the aliases of
// one calibration key): `prepared` is null for a tensor without calibration,
// else PrepareHessian's result on the tensors' device (an error there is a
// fallback to no compensation, reported in the stats). INVALID_ARGUMENT if
// its size does not match the columns of a 2-D weight.
absl::StatusOr<LayerResult> TailorLayerPrepared(
    absl::string_view name, const at::Tensor& w_pre, const at::Tensor& w_ft,
    const absl::StatusOr<PreparedHessian>* prepared,
    const TailorOptions& options);

}  // namespace tailor

#endif  // TAILOR_FUSION_TAILOR_KERNEL_H_
