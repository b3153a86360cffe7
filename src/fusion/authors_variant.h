#ifndef TAILOR_FUSION_AUTHORS_VARIANT_H_
#define TAILOR_FUSION_AUTHORS_VARIANT_H_

// Model Tailor as the authors released it (variant authors-code, issue #19
// point 5; src/DESIGN.md §2.1 "The authors' released code"): the per-block
// selection and compensation loop of their SparseGPT-derived fasterprune
// (github.com/didizhu-zju/Model-Tailor, llava/train/sparsegpt.py), for
// researchers reproducing their numbers. Our own implementation of what that
// loop does, in the kernel's type on any device:
//
// for each block of B = block_size columns [i1, i2), left to right:
//   W1 = Wp + D, D the delta as compensated by the earlier blocks;
//   score = omega z(|D0|) + (1 - omega) z(W1^2 / U_jj^2), z the z-score per
//     row within the block (sample standard deviation, as torch.std),
//     salience from the original delta D0, sensitivity from the compensated
//     fine-tuned weights;
//   the AuthorsCodeRevertCount(rho, rows * width) lowest scores of the
//     block are reverted (one threshold per block, over all its rows), the
//     rest kept;
//   OBS column by column with their + sign: err = D[r, j] / U_jj on the
//     reverted rows, D[r, j:] += err U[j, j:], D[r, j] = 0; and then
//     D[:, i2:] += Err U[i1:i2, i2:].
//
// Where their arithmetic is undefined we choose: a row of a block whose
// values are all equal (or a block one column wide, where torch.std of one
// value is NaN) z-scores to 0 instead of NaN; and where scores tie at the
// threshold, exactly the count is reverted (ties kept by the lower row-major
// index, as everywhere in this kernel) where their `<= threshold` reverts
// every tied entry. With distinct scores the two agree.

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <utility>

#include "fusion/hessian_prep.h"
#include "fusion/layer_options.h"

namespace tailor {

// Entries their code reverts in a block of n at keep ratio rho: their
// threshold is the value at index int(n * (1 - rho)) of the ascending sort
// and every entry up to it is reverted, so int(n (1 - rho)) + 1 (at most n):
// one even at rho = 1. The block keeps n minus this.
int64_t AuthorsCodeRevertCount(double keep_ratio, int64_t n);

// Their fused score of one block: omega z(|d0|) + (1 - omega) z(w^2 /
// u_diag^2), z per row (see above); d0 and w are r x width, u_diag is
// U's diagonal over the block's columns (width).
at::Tensor AuthorsCodeScores(const at::Tensor& d0, const at::Tensor& w,
                             const at::Tensor& u_diag, double omega);

// The whole loop on one r x c layer: d0 = Ws - Wp and w_pre = Wp in the
// kernel's type, `hessian` prepared with DeadColumns::kSelect (their
// H_jj = 1 fix-up; options.Validate() demands it). Returns {mask, delta}:
// mask true where kept, delta = fused - Wp, exactly 0 where reverted.
std::pair<at::Tensor, at::Tensor> AuthorsCodeLayer(
    const at::Tensor& d0, const at::Tensor& w_pre,
    const PreparedHessian& hessian, const TailorOptions& options);

}  // namespace tailor

#endif  // TAILOR_FUSION_AUTHORS_VARIANT_H_
