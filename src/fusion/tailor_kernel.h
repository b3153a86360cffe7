#ifndef TAILOR_FUSION_TAILOR_KERNEL_H_
#define TAILOR_FUSION_TAILOR_KERNEL_H_

#include <ATen/core/Tensor.h>

#include <optional>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "fusion/layer_options.h"

namespace tailor {

// The per-layer Model Tailor kernel (src/DESIGN.md §2.1), device-generic: it
// runs wherever its input tensors live (CUDA or CPU) in float32 or float64.

// H prepared for OBS: dead inputs fixed, damped, inverted through Cholesky.
struct PreparedHessian {
  at::Tensor h;          // damped H (c x c), the error yardstick
  at::Tensor hinv_diag;  // diag(H^-1) (c)
  at::Tensor u;          // upper Cholesky factor of H^-1 (c x c)
  double damp = 0;       // lambda actually used
  int64_t dead_columns = 0;

  int64_t bytes() const;  // memory held by the tensors above
};

// Prepares `h` (c x c, any floating type) in the kernel's type on its device.
// One Cholesky factorisation and one triangular inverse (src/DESIGN.md §2.2):
// with J the exchange matrix and L L^T = J H J, U = J L^-1 J and
// diag(H^-1)_j = sum_i U_ij^2; H^-1 itself is never formed. (SparseGPT's
// cholesky -> cholesky_inverse -> cholesky gives the same U in exact
// arithmetic at twice the flops; the two agree to rounding.)
// If the factorisation fails, retries with 10x damping while
// lambda <= options.max_damp; then FAILED_PRECONDITION saying so.
absl::StatusOr<PreparedHessian> PrepareHessian(const at::Tensor& h,
                                               const TailorOptions& options);

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
  int64_t dead_columns = 0;
  // E(D) = tr((D0 - D) H (D0 - D)^T) for the mask alone (D = D0 * M) and
  // after compensation; NaN without a Hessian. Sequential compensation's E
  // is ||Err||_F^2 of the OBS column errors (exact: D0 - D = Err U and
  // U H U^T = I), at no extra cost. The mask-only E costs an r x c x c GEMM,
  // so unless options.exact_errors it is estimated from kErrorSampleRows
  // evenly spaced rows, scaled by rows / sampled rows (exact when the tensor
  // has no more rows than that); the *_estimated flags say which. With
  // compensation "none" (or a fallback) both are the mask-only value.
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

// Rows sampled by the mask-only error estimate.
inline constexpr int64_t kErrorSampleRows = 64;

// --- Building blocks, exposed for tests and benchmarks. ---

// INVALID_ARGUMENT "<name>: <what> contains NaN or Inf" unless all finite.
absl::Status CheckFiniteTensor(const at::Tensor& t, absl::string_view name,
                               absl::string_view what);

// k = round(rho * n), half away from zero, clamped to [0, n].
int64_t KeepCount(double keep_ratio, int64_t n);

// Fused score omega * norm(|D|) + (1 - omega) * norm(D^2 / (2 hinv_diag_j)),
// normalised per options (hinv_diag undefined: salience only). D is r x c.
at::Tensor FusedScores(const at::Tensor& d, const at::Tensor& hinv_diag,
                       const TailorOptions& options);

// Top-k mask of `scores` (r x c) per options.scope; ties go to the lower
// row-major index. For Scope::kBlock, each block of block_size columns (all
// rows) keeps round(rho * its size).
at::Tensor SelectMask(const at::Tensor& scores, const TailorOptions& options);

// OBS with a fixed mask, columns left to right, lazy block updates of width
// `block_size` (SparseGPT's loop). If `err_sq` is given, *err_sq receives
// ||Err||_F^2, the sum of the squared column errors (accumulated in
// float64): tr((d0 - D) H (d0 - D)^T) for the H whose U this is.
// On the CPU (float32/float64) each row's in-block sweep is a scalar loop
// over contiguous memory and the lazy update one in-place GEMM per block
// (D[:, i2:] -= Err1 U[i1:i2, i2:] through addmm_); the arithmetic is that
// of the tensor-op loop used on other devices, so both give the same bits
// for block_size up to the BLAS's K blocking (>= 256 in OpenBLAS).
at::Tensor CompensateSequential(const at::Tensor& d0, const at::Tensor& mask,
                                const at::Tensor& u, int64_t block_size,
                                double* err_sq = nullptr);

// Scope::kBlock with sequential compensation: each block's mask is chosen
// from the current compensated D with U_jj^2 as the diagonal, then the block
// is compensated. Returns {mask, delta}; *err_sq as above when given.
std::pair<at::Tensor, at::Tensor> SelectAndCompensateBlocks(
    const at::Tensor& d0, const PreparedHessian& hessian,
    const TailorOptions& options, double* err_sq = nullptr);

// Per-row least squares on the kept support:
// D_r[K] = D0_r[K] + H_KK^-1 H_KR D0_r[R], batched in row chunks whose
// scratch stays under `chunk_bytes`.
absl::StatusOr<at::Tensor> CompensateExact(const at::Tensor& d0,
                                           const at::Tensor& mask,
                                           const at::Tensor& h,
                                           int64_t chunk_bytes);

// tr((d0 - d) h (d0 - d)^T), accumulated in float64.
double ReconstructionError(const at::Tensor& d0, const at::Tensor& d,
                           const at::Tensor& h);

// The mask-only error tr(R h R^T), R = d0 where `mask` is false (else 0),
// over `sample_rows` evenly spaced rows (row floor(i * rows / s)) scaled by
// rows / s; exact when sample_rows >= rows. Sets *estimated accordingly.
double MaskOnlyError(const at::Tensor& d0, const at::Tensor& mask,
                     const at::Tensor& h, int64_t sample_rows, bool* estimated);

}  // namespace tailor

#endif  // TAILOR_FUSION_TAILOR_KERNEL_H_
