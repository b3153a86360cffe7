#include "fusion/obs_compensation.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <functional>
#include <utility>

#include "fusion/kernel_types.h"
#include "fusion/tailor_scores.h"

namespace tailor {
namespace {

using at::indexing::Slice;

// OBS inside one block of columns: reverts the entries of `w1` where `m1` is
// false, column by column, pushing each error onto the block's later columns
// through `u1` (the block's diagonal part of U) with `sign`. Returns the
// per-column errors for the lazy update of the columns after the block.
at::Tensor ObsBlock(at::Tensor& w1, const at::Tensor& m1, const at::Tensor& u1,
                    ObsSign sign = ObsSign::kMinus) {
  at::Tensor err1 = at::zeros_like(w1);
  for (int64_t i = 0; i < w1.size(1); ++i) {
    at::Tensor w = w1.select(1, i);
    at::Tensor q = at::where(m1.select(1, i), w, at::zeros_like(w));
    at::Tensor err = (w - q) / u1.index({i, i});
    at::Tensor step = err.unsqueeze(1) *
                      u1.index({i, Slice(i, at::indexing::None)}).unsqueeze(0);
    at::Tensor rest = w1.index({Slice(), Slice(i, at::indexing::None)});
    if (sign == ObsSign::kMinus) {
      rest.sub_(step);
    } else {
      rest.add_(step);
    }
    w1.select(1, i).copy_(q);  // exactly the kept value or exactly 0
    err1.select(1, i).copy_(err);
  }
  return err1;
}

// Writes the finished block [i1, i2) back into d and applies its errors to
// every later column at once: D[:, i2:] -= Err1 U[i1:i2, i2:] (+= with
// ObsSign::kPlus).
void FinishBlock(at::Tensor& d, const at::Tensor& w1, const at::Tensor& err1,
                 const at::Tensor& u, int64_t i1, int64_t i2,
                 ObsSign sign = ObsSign::kMinus) {
  d.index({Slice(), Slice(i1, i2)}).copy_(w1);
  if (i2 < d.size(1)) {
    at::Tensor step =
        err1.matmul(u.index({Slice(i1, i2), Slice(i2, at::indexing::None)}));
    at::Tensor rest = d.index({Slice(), Slice(i2, at::indexing::None)});
    if (sign == ObsSign::kMinus) {
      rest.sub_(step);
    } else {
      rest.add_(step);
    }
  }
}

// One row's OBS inside a block of `width` columns, in place: w (the row's
// block, contiguous), m its mask, u1 the block's diagonal part of U (row
// stride ldu), err the row's column errors out. The arithmetic of ObsBlock
// element by element: err = (w - q) / u_ii, then w[j] -= err * u_ij for
// j >= i with the product rounded on its own (this file is compiled with
// -ffp-contract=off), then w[i] = q. kPlus: w[j] += err * u_ij instead (the
// authors' released code).
template <typename T, bool kPlus = false>
inline __attribute__((always_inline)) void ObsRow(T* w, const bool* m,
                                                  const T* u1, int64_t ldu,
                                                  int64_t width, T* err) {
  for (int64_t i = 0; i < width; ++i) {
    const T wi = w[i];
    const T q = m[i] ? wi : T(0);
    const T e = (wi - q) / u1[i * ldu + i];
    const T* ui = u1 + i * ldu;
    for (int64_t j = i; j < width; ++j) {
      const T p = e * ui[j];
      w[j] = kPlus ? w[j] + p : w[j] - p;
    }
    w[i] = q;
    err[i] = e;
  }
}

// ObsRow over `rows` rows (row strides ldw, ldm; err rows of `width`).
template <typename T, bool kPlus = false>
inline void ObsRows(T* w, int64_t ldw, const bool* m, int64_t ldm, const T* u1,
                    int64_t ldu, int64_t width, T* err, int64_t rows) {
  for (int64_t r = 0; r < rows; ++r) {
    ObsRow<T, kPlus>(w + r * ldw, m + r * ldm, u1, ldu, width, err + r * width);
  }
}

// The same code compiled for AVX2 (8 floats a step instead of SSE2's 4).
// Only separate multiplies and subtractions are emitted (no FMA: not in the
// target, and -ffp-contract=off), so the results are the same bits.
template <typename T, bool kPlus = false>
__attribute__((target("avx2"))) void ObsRowsAvx2(T* w, int64_t ldw,
                                                 const bool* m, int64_t ldm,
                                                 const T* u1, int64_t ldu,
                                                 int64_t width, T* err,
                                                 int64_t rows) {
  for (int64_t r = 0; r < rows; ++r) {
    ObsRow<T, kPlus>(w + r * ldw, m + r * ldm, u1, ldu, width, err + r * width);
  }
}

bool HasAvx2() {
  static const bool has = __builtin_cpu_supports("avx2");
  return has;
}

// The block's mask: a pointer to its first row and the row stride.
using BlockMask =
    std::function<std::pair<const bool*, int64_t>(int64_t i1, int64_t i2)>;

// CompensateSequential on the CPU, in place on `d` (contiguous r x c of T);
// returns ||Err||_F^2. kPlus: the authors' + sign (ObsRow).
template <typename T, bool kPlus = false>
double SequentialCpu(at::Tensor& d, const at::Tensor& u_in, int64_t block,
                     const BlockMask& block_mask) {
  const at::Tensor u = u_in.contiguous();
  const int64_t rows = d.size(0), cols = d.size(1);
  T* dp = d.data_ptr<T>();
  const T* up = u.data_ptr<T>();
  double err_sq = 0;
  at::Tensor err1;
  for (int64_t i1 = 0; i1 < cols; i1 += block) {
    const int64_t i2 = std::min(cols, i1 + block);
    const int64_t width = i2 - i1;
    if (!err1.defined() || err1.size(1) != width) {
      err1 = at::empty({rows, width}, d.options());
    }
    T* ep = err1.data_ptr<T>();
    auto [mp, ldm] = block_mask(i1, i2);
    const T* u1 = up + i1 * cols + i1;
    if (HasAvx2()) {
      ObsRowsAvx2<T, kPlus>(dp + i1, cols, mp, ldm, u1, cols, width, ep, rows);
    } else {
      ObsRows<T, kPlus>(dp + i1, cols, mp, ldm, u1, cols, width, ep, rows);
    }
    for (int64_t i = 0; i < rows * width; ++i) {
      err_sq += static_cast<double>(ep[i]) * static_cast<double>(ep[i]);
    }
    if (i2 < cols) {
      // D[:, i2:] -= Err1 U[i1:i2, i2:], in place (the previous
      // d.sub_(err1.matmul(...)) without its r x (c - i2) temporary).
      at::Tensor rest = d.narrow(1, i2, cols - i2);
      rest.addmm_(err1, u.narrow(0, i1, width).narrow(1, i2, cols - i2),
                  /*beta=*/1, /*alpha=*/kPlus ? 1 : -1);
    }
  }
  return err_sq;
}

}  // namespace

// CompensateSequential in place on `d` (contiguous); returns ||Err||_F^2.
double CompensateSequentialInPlace(at::Tensor& d, const at::Tensor& mask,
                                   const at::Tensor& u, int64_t block_size) {
  if (CpuFastPath(d)) {
    const at::Tensor m = mask.to(at::kBool).contiguous();
    const bool* mp = m.data_ptr<bool>();
    const int64_t cols = d.size(1);
    BlockMask fixed = [&](int64_t i1, int64_t) {
      return std::pair<const bool*, int64_t>(mp + i1, cols);
    };
    const at::Tensor ut = u.to(d.scalar_type());
    return d.scalar_type() == at::kFloat
               ? SequentialCpu<float>(d, ut, block_size, fixed)
               : SequentialCpu<double>(d, ut, block_size, fixed);
  }
  double e = 0;
  for (int64_t i1 = 0; i1 < d.size(1); i1 += block_size) {
    const int64_t i2 = std::min(d.size(1), i1 + block_size);
    at::Tensor w1 = d.index({Slice(), Slice(i1, i2)}).clone();
    at::Tensor err1 = ObsBlock(w1, mask.index({Slice(), Slice(i1, i2)}),
                               u.index({Slice(i1, i2), Slice(i1, i2)}));
    e += err1.to(at::kDouble).square().sum().item<double>();
    FinishBlock(d, w1, err1, u, i1, i2);
  }
  return e;
}

at::Tensor CompensateSequential(const at::Tensor& d0, const at::Tensor& mask,
                                const at::Tensor& u, int64_t block_size,
                                double* err_sq) {
  at::Tensor d = d0.contiguous().clone();
  const double e = CompensateSequentialInPlace(d, mask, u, block_size);
  if (err_sq != nullptr) *err_sq = e;
  return d;
}

std::pair<at::Tensor, at::Tensor> CompensateAdaptiveBlocks(
    const at::Tensor& d0, const at::Tensor& u_in, int64_t block_size,
    const BlockSelector& select, ObsSign sign, double* err_sq) {
  at::Tensor d = d0.contiguous().clone();
  at::Tensor mask = at::zeros(d.sizes(), d.options().dtype(at::kBool));
  // The block's mask from the current D, recorded in `mask`.
  auto choose = [&](int64_t i1, int64_t i2) {
    at::Tensor m1 = select(d, i1, i2).to(at::kBool);
    mask.index({Slice(), Slice(i1, i2)}).copy_(m1);
    return m1;
  };
  const bool plus = sign == ObsSign::kPlus;
  if (CpuFastPath(d)) {
    at::Tensor m1;
    BlockMask adaptive = [&](int64_t i1, int64_t i2) {
      m1 = choose(i1, i2).contiguous();
      return std::pair<const bool*, int64_t>(m1.data_ptr<bool>(), i2 - i1);
    };
    const at::Tensor u = u_in.to(d.scalar_type());
    double e = 0;
    if (d.scalar_type() == at::kFloat) {
      e = plus ? SequentialCpu<float, true>(d, u, block_size, adaptive)
               : SequentialCpu<float>(d, u, block_size, adaptive);
    } else {
      e = plus ? SequentialCpu<double, true>(d, u, block_size, adaptive)
               : SequentialCpu<double>(d, u, block_size, adaptive);
    }
    if (err_sq != nullptr) *err_sq = e;
    return {mask, d};
  }
  double e = 0;
  for (int64_t i1 = 0; i1 < d.size(1); i1 += block_size) {
    const int64_t i2 = std::min(d.size(1), i1 + block_size);
    at::Tensor m1 = choose(i1, i2);
    at::Tensor w1 = d.index({Slice(), Slice(i1, i2)}).clone();
    at::Tensor u1 = u_in.index({Slice(i1, i2), Slice(i1, i2)});
    at::Tensor err1 = ObsBlock(w1, m1, u1, sign);
    e += err1.to(at::kDouble).square().sum().item<double>();
    FinishBlock(d, w1, err1, u_in, i1, i2, sign);
  }
  if (err_sq != nullptr) *err_sq = e;
  return {mask, d};
}

std::pair<at::Tensor, at::Tensor> SelectAndCompensateBlocks(
    const at::Tensor& d0, const PreparedHessian& hessian,
    const TailorOptions& options, double* err_sq) {
  // The block's mask from the current compensated D, U_jj^2 as diagonal.
  BlockSelector select = [&](const at::Tensor& d, int64_t i1, int64_t i2) {
    at::Tensor w1 = d.index({Slice(), Slice(i1, i2)}).contiguous();
    at::Tensor u1 = hessian.u.index({Slice(i1, i2), Slice(i1, i2)});
    const at::Tensor dead = hessian.revert_dead.defined()
                                ? hessian.revert_dead.index({Slice(i1, i2)})
                                : at::Tensor();
    return SelectBlock(
        LiveScores(w1, u1.diagonal().pow(2), options, Scope::kBlock, dead),
        options.keep_ratio, dead);
  };
  return CompensateAdaptiveBlocks(d0, hessian.u, options.block_size, select,
                                  ObsSign::kMinus, err_sq);
}

}  // namespace tailor
