#ifndef TAILOR_FUSION_HESSIAN_PREP_H_
#define TAILOR_FUSION_HESSIAN_PREP_H_

// Hessian preparation for the Model Tailor kernel (src/DESIGN.md §2.2).

#include <ATen/core/Tensor.h>

#include <cstdint>

#include "absl/status/statusor.h"
#include "fusion/layer_options.h"

namespace tailor {

// H prepared for OBS: dead inputs fixed, damped, inverted through Cholesky.
struct PreparedHessian {
  at::Tensor h;          // damped H (c x c), the error yardstick
  at::Tensor hinv_diag;  // diag(H^-1) (c)
  at::Tensor u;          // upper Cholesky factor of H^-1 (c x c)
  double damp = 0;       // lambda actually used
  int64_t dead_columns = 0;
  // bool (c): diag(H)_j == 0 in the input (dead inputs); set only when
  // dead_columns > 0 and options.dead_columns is kRevert, i.e. when the
  // kernel reverts those columns for free.
  at::Tensor revert_dead;

  int64_t bytes() const;  // memory held by the tensors above
};

// Prepares `h` (c x c, any floating type) in the kernel's type on its device.
// Dead inputs (H_jj == 0, so row and column j of the PSD H are zero) get
// H_jj = 1, SparseGPT's fix-up that keeps H invertible; it decouples j from
// every other column (U_jk = 0 for k != j). The damping's mean(diag H) is
// taken over the live columns when options.dead_columns is kRevert (so the
// live problem does not depend on the fix-up's arbitrary 1, i.e. on H's
// scale), over all of them after the fix-up with kSelect (SparseGPT).
// One Cholesky factorisation and one triangular inverse (src/DESIGN.md §2.2):
// with J the exchange matrix and L L^T = J H J, U = J L^-1 J and
// diag(H^-1)_j = sum_i U_ij^2; H^-1 itself is never formed. (SparseGPT's
// cholesky -> cholesky_inverse -> cholesky gives the same U in exact
// arithmetic at twice the flops; the two agree to rounding.)
// If the factorisation fails, retries with 10x damping while
// lambda <= options.max_damp; then FAILED_PRECONDITION saying so.
absl::StatusOr<PreparedHessian> PrepareHessian(const at::Tensor& h,
                                               const TailorOptions& options);

}  // namespace tailor

#endif  // TAILOR_FUSION_HESSIAN_PREP_H_
