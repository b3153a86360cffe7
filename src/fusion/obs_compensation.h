#ifndef TAILOR_FUSION_OBS_COMPENSATION_H_
#define TAILOR_FUSION_OBS_COMPENSATION_H_

// Sequential (OBS) compensation of the kept entries for the Model Tailor
// kernel (src/DESIGN.md §2.1): SparseGPT's column loop with lazy block
// updates.

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <functional>
#include <utility>

#include "fusion/hessian_prep.h"
#include "fusion/layer_options.h"

namespace tailor {

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

// CompensateSequential in place on `d` (contiguous, the kernel's type), with
// no copy of it; returns ||Err||_F^2.
double CompensateSequentialInPlace(at::Tensor& d, const at::Tensor& mask,
                                   const at::Tensor& u, int64_t block_size);

// The sign of the OBS update of the later columns: kMinus is the paper's
// (D[r, j:] -= err U[j, j:]; Theorem 4.5), kPlus that of the authors'
// released code (+=), which raises the error (src/DESIGN.md §2.1).
enum class ObsSign { kMinus, kPlus };

// Chooses block [i1, i2)'s mask (bool r x (i2 - i1), true = kept) from the
// current D (r x c, every earlier block finished and its lazy update
// applied; columns >= i1 not yet touched by this block).
using BlockSelector =
    std::function<at::Tensor(const at::Tensor& d, int64_t i1, int64_t i2)>;

// The column loop of CompensateSequential with each block's mask chosen by
// `select` at the start of the block and the update's `sign`. Returns
// {mask, delta}; *err_sq (when given) receives ||Err||_F^2, which is
// tr((d0 - D) H (d0 - D)^T) only for ObsSign::kMinus.
std::pair<at::Tensor, at::Tensor> CompensateAdaptiveBlocks(
    const at::Tensor& d0, const at::Tensor& u, int64_t block_size,
    const BlockSelector& select, ObsSign sign, double* err_sq = nullptr);

// Scope::kBlock with sequential compensation: each block's mask is chosen
// from the current compensated D with U_jj^2 as the diagonal (never a
// column of hessian.revert_dead: SelectBlock's dead form), then the block
// is compensated. Returns {mask, delta}; *err_sq as above when given.
std::pair<at::Tensor, at::Tensor> SelectAndCompensateBlocks(
    const at::Tensor& d0, const PreparedHessian& hessian,
    const TailorOptions& options, double* err_sq = nullptr);

}  // namespace tailor

#endif  // TAILOR_FUSION_OBS_COMPENSATION_H_
