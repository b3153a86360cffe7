#include "fusion/tailor_kernel.h"

#include <ATen/ATen.h>
#include <dlfcn.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstring>
#include <functional>
#include <limits>

#include "absl/strings/str_cat.h"
#include "fusion/top_k.h"
#include "util/status_macros.h"
#include "util/torch_status.h"

namespace tailor {
namespace {

using at::indexing::Slice;

// Whether every entry is finite (defined below).
bool AllFinite(const at::Tensor& t);

at::ScalarType KernelType(const TailorOptions& options) {
  return options.float64 ? at::kDouble : at::kFloat;
}

// (x - min) / (max - min) over each row of `x` (a row = one group); a
// constant group maps to 0.
at::Tensor MinMaxRows(const at::Tensor& x) {
  at::Tensor lo = std::get<0>(x.min(1, /*keepdim=*/true));
  at::Tensor hi = std::get<0>(x.max(1, /*keepdim=*/true));
  at::Tensor range = hi - lo;
  return at::where(range > 0, (x - lo) / range.clamp_min(1e-300),
                   at::zeros_like(x));
}

// (x - mean) / std (population) over each row; a constant row maps to 0.
at::Tensor ZScoreRows(const at::Tensor& x) {
  at::Tensor mean = x.mean(1, /*keepdim=*/true);
  at::Tensor std = (x - mean).pow(2).mean(1, /*keepdim=*/true).sqrt();
  return at::where(std > 0, (x - mean) / std.clamp_min(1e-300),
                   at::zeros_like(x));
}

// Normalises x (r x c) for selection in `scope`. A block-scope caller passes
// one block, which is then normalised as a whole.
at::Tensor Normalize(const at::Tensor& x, const TailorOptions& options,
                     Scope scope) {
  if (options.normalization == Normalization::kZScore) {
    // Per row within each block of block_size columns.
    std::vector<at::Tensor> parts;
    for (int64_t j = 0; j < x.size(1); j += options.block_size) {
      const int64_t j2 = std::min(x.size(1), j + options.block_size);
      parts.push_back(ZScoreRows(x.index({Slice(), Slice(j, j2)})));
    }
    return at::cat(parts, 1);
  }
  if (scope == Scope::kRow) return MinMaxRows(x);
  return MinMaxRows(x.reshape({1, -1})).view(x.sizes());
}

// The CPU path of ScoresWithDiag for min-max normalisation: the same
// arithmetic as the tensor ops below, element by element (so the same bits),
// in two passes and one output buffer instead of a dozen temporaries.
// `per_row`: each row is a scope (Scope::kRow), else the whole tensor.
template <typename T>
at::Tensor MinMaxScoresCpu(const at::Tensor& d_in, const at::Tensor& diag_in,
                           double omega, bool per_row) {
  const at::Tensor d = d_in.contiguous();
  const int64_t rows = d.size(0), cols = d.size(1);
  const bool fuse = diag_in.defined();
  at::Tensor h2;  // 2 * diag, as the tensor expression computes it
  if (fuse) h2 = (2.0 * diag_in.to(d.scalar_type())).contiguous();
  const T* dp = d.data_ptr<T>();
  const T* hp = fuse ? h2.data_ptr<T>() : nullptr;
  at::Tensor out = at::empty_like(d);
  T* op = out.data_ptr<T>();
  const T w_a = static_cast<T>(omega), w_b = static_cast<T>(1.0 - omega);
  // clamp_min(1e-300) in the kernel type (0 for float).
  const T tiny = static_cast<T>(1e-300);
  struct Range {
    T lo = std::numeric_limits<T>::infinity();
    T hi = -std::numeric_limits<T>::infinity();
    bool nan = false;
    void Add(T x) {
      if (std::isnan(x)) nan = true;
      lo = x < lo ? x : lo;
      hi = x > hi ? x : hi;
    }
    // (x - lo) / range where range > 0, else 0 (at::where).
    T Norm(T x, T tiny) const {
      const T range = hi - lo;
      if (!(range > 0)) return T(0);
      return (x - lo) / std::max(range, tiny);
    }
    void Finish() {
      if (nan) lo = hi = std::numeric_limits<T>::quiet_NaN();
    }
  };
  const int64_t groups = per_row ? rows : 1;
  const int64_t group_len = per_row ? cols : rows * cols;
  for (int64_t g = 0; g < groups; ++g) {
    const T* x = dp + g * group_len;
    T* o = op + g * group_len;
    Range ra, rb;
    for (int64_t r0 = 0; r0 < group_len; r0 += cols) {
      for (int64_t j = 0; j < cols; ++j) {
        const T v = x[r0 + j];
        ra.Add(std::fabs(v));
        if (fuse) {
          const T sq = v * v;
          rb.Add(sq / hp[j]);
        }
      }
    }
    ra.Finish();
    rb.Finish();
    if (!fuse) {
      for (int64_t i = 0; i < group_len; ++i) {
        o[i] = ra.Norm(std::fabs(x[i]), tiny);
      }
      continue;
    }
    for (int64_t r0 = 0; r0 < group_len; r0 += cols) {
      for (int64_t j = 0; j < cols; ++j) {
        const T v = x[r0 + j];
        const T sq = v * v;
        const T a = w_a * ra.Norm(std::fabs(v), tiny);
        const T b = w_b * rb.Norm(sq / hp[j], tiny);
        o[r0 + j] = a + b;
      }
    }
  }
  return out;
}

at::Tensor ScoresWithDiag(const at::Tensor& d, const at::Tensor& diag,
                          const TailorOptions& options, Scope scope) {
  const bool fuse = diag.defined() && options.omega < 1.0;
  if (options.normalization == Normalization::kMinMax && d.device().is_cpu() &&
      d.dim() == 2 && (!fuse || diag.device().is_cpu())) {
    const bool per_row = scope == Scope::kRow;
    const at::Tensor h = fuse ? diag : at::Tensor();
    if (d.scalar_type() == at::kFloat) {
      return MinMaxScoresCpu<float>(d, h, options.omega, per_row);
    }
    if (d.scalar_type() == at::kDouble) {
      return MinMaxScoresCpu<double>(d, h, options.omega, per_row);
    }
  }
  at::Tensor salience = d.abs();
  if (!fuse) return Normalize(salience, options, scope);
  at::Tensor sensitivity = d.pow(2) / (2.0 * diag.unsqueeze(0));
  return options.omega * Normalize(salience, options, scope) +
         (1.0 - options.omega) * Normalize(sensitivity, options, scope);
}

at::Tensor SelectBlock(const at::Tensor& scores, double keep_ratio) {
  return TopKMaskFlat(scores, KeepCount(keep_ratio, scores.numel()));
}

// OBS inside one block of columns: reverts the entries of `w1` where `m1` is
// false, column by column, pushing each error onto the block's later columns
// through `u1` (the block's diagonal part of U). Returns the per-column
// errors for the lazy update of the columns after the block.
at::Tensor ObsBlock(at::Tensor& w1, const at::Tensor& m1,
                    const at::Tensor& u1) {
  at::Tensor err1 = at::zeros_like(w1);
  for (int64_t i = 0; i < w1.size(1); ++i) {
    at::Tensor w = w1.select(1, i);
    at::Tensor q = at::where(m1.select(1, i), w, at::zeros_like(w));
    at::Tensor err = (w - q) / u1.index({i, i});
    w1.index({Slice(), Slice(i, at::indexing::None)})
        .sub_(err.unsqueeze(1) *
              u1.index({i, Slice(i, at::indexing::None)}).unsqueeze(0));
    w1.select(1, i).copy_(q);  // exactly the kept value or exactly 0
    err1.select(1, i).copy_(err);
  }
  return err1;
}

// Writes the finished block [i1, i2) back into d and applies its errors to
// every later column at once: D[:, i2:] -= Err1 U[i1:i2, i2:].
void FinishBlock(at::Tensor& d, const at::Tensor& w1, const at::Tensor& err1,
                 const at::Tensor& u, int64_t i1, int64_t i2) {
  d.index({Slice(), Slice(i1, i2)}).copy_(w1);
  if (i2 < d.size(1)) {
    d.index({Slice(), Slice(i2, at::indexing::None)})
        .sub_(err1.matmul(
            u.index({Slice(i1, i2), Slice(i2, at::indexing::None)})));
  }
}

// One row's OBS inside a block of `width` columns, in place: w (the row's
// block, contiguous), m its mask, u1 the block's diagonal part of U (row
// stride ldu), err the row's column errors out. The arithmetic of ObsBlock
// element by element: err = (w - q) / u_ii, then w[j] -= err * u_ij for
// j >= i with the product rounded on its own (this file is compiled with
// -ffp-contract=off), then w[i] = q.
template <typename T>
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
      w[j] = w[j] - p;
    }
    w[i] = q;
    err[i] = e;
  }
}

// ObsRow over `rows` rows (row strides ldw, ldm; err rows of `width`).
template <typename T>
inline void ObsRows(T* w, int64_t ldw, const bool* m, int64_t ldm, const T* u1,
                    int64_t ldu, int64_t width, T* err, int64_t rows) {
  for (int64_t r = 0; r < rows; ++r) {
    ObsRow<T>(w + r * ldw, m + r * ldm, u1, ldu, width, err + r * width);
  }
}

// The same code compiled for AVX2 (8 floats a step instead of SSE2's 4).
// Only separate multiplies and subtractions are emitted (no FMA: not in the
// target, and -ffp-contract=off), so the results are the same bits.
template <typename T>
__attribute__((target("avx2"))) void ObsRowsAvx2(T* w, int64_t ldw,
                                                 const bool* m, int64_t ldm,
                                                 const T* u1, int64_t ldu,
                                                 int64_t width, T* err,
                                                 int64_t rows) {
  for (int64_t r = 0; r < rows; ++r) {
    ObsRow<T>(w + r * ldw, m + r * ldm, u1, ldu, width, err + r * width);
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
// returns ||Err||_F^2.
template <typename T>
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
      ObsRowsAvx2<T>(dp + i1, cols, mp, ldm, u1, cols, width, ep, rows);
    } else {
      ObsRows<T>(dp + i1, cols, mp, ldm, u1, cols, width, ep, rows);
    }
    for (int64_t i = 0; i < rows * width; ++i) {
      err_sq += static_cast<double>(ep[i]) * static_cast<double>(ep[i]);
    }
    if (i2 < cols) {
      // D[:, i2:] -= Err1 U[i1:i2, i2:], in place (the previous
      // d.sub_(err1.matmul(...)) without its r x (c - i2) temporary).
      at::Tensor rest = d.narrow(1, i2, cols - i2);
      rest.addmm_(err1, u.narrow(0, i1, width).narrow(1, i2, cols - i2),
                  /*beta=*/1, /*alpha=*/-1);
    }
  }
  return err_sq;
}

bool CpuFastPath(const at::Tensor& d) {
  return d.device().is_cpu() &&
         (d.scalar_type() == at::kFloat || d.scalar_type() == at::kDouble);
}

// LAPACK's triangular inverse (xTRTRI), looked up at run time in the LAPACK
// that LibTorch loaded; null when it is not there.
using TrtriFn = void (*)(const char*, const char*, const int*, void*,
                         const int*, int*);
TrtriFn LookupTrtri(bool dbl) {
  static TrtriFn s =
      reinterpret_cast<TrtriFn>(::dlsym(RTLD_DEFAULT, "strtri_"));
  static TrtriFn d =
      reinterpret_cast<TrtriFn>(::dlsym(RTLD_DEFAULT, "dtrtri_"));
  return dbl ? d : s;
}

// L^-1 for a lower-triangular L (c x c), or an undefined tensor when the
// inverse is not finite.
at::Tensor LowerInverse(at::Tensor l) {
  const int64_t c = l.size(0);
  TrtriFn trtri = LookupTrtri(l.scalar_type() == at::kDouble);
  at::Tensor inv;
  if (l.device().is_cpu() && trtri != nullptr && c <= INT32_MAX) {
    // In place on the factor (no copy): LAPACK reads column-major, so a
    // column-major L is inverted as the lower triangle ("L"); a row-major
    // one is column-major L^T, inverted as the upper ("U"), which leaves
    // (L^T)^-1 = (L^-1)^T column-major, i.e. L^-1 row-major. The other
    // triangle stays zero either way.
    const char* uplo = "L";
    if (!(l.stride(0) == 1 && l.stride(1) == c)) {
      l = l.contiguous();
      uplo = "U";
    }
    const int n = static_cast<int>(c);
    int info = 0;
    trtri(uplo, "N", &n, l.data_ptr(), &n, &info);
    if (info != 0) return at::Tensor();
    inv = l;
  } else {
    inv = at::linalg_solve_triangular(l, at::eye(c, l.options()),
                                      /*upper=*/false);
  }
  if (!AllFinite(inv.is_contiguous() ? inv : inv.t())) return at::Tensor();
  return inv;
}

// diag(H^-1)_j = sum_i U_ij^2, accumulated in float64 row by row on the CPU.
at::Tensor ColumnSquareSums(const at::Tensor& u) {
  if (!CpuFastPath(u)) return u.square().sum(0);
  const at::Tensor c = u.contiguous();
  const int64_t n = c.size(0), m = c.size(1);
  std::vector<double> acc(m, 0.0);
  auto run = [&](auto* p) {
    for (int64_t i = 0; i < n; ++i) {
      const auto* row = p + i * m;
      for (int64_t j = 0; j < m; ++j) {
        acc[j] += static_cast<double>(row[j]) * static_cast<double>(row[j]);
      }
    }
  };
  if (c.scalar_type() == at::kFloat) {
    run(c.data_ptr<float>());
  } else {
    run(c.data_ptr<double>());
  }
  return at::tensor(acc, at::TensorOptions().dtype(at::kDouble))
      .to(c.scalar_type());
}

}  // namespace

namespace {

// Whether every entry of a contiguous CPU float/double tensor is finite: an
// exponent of all ones is Inf or NaN. An integer OR-reduction (vectorised),
// with no n-sized temporary (at::isfinite allocates one).
template <typename T>
bool AllFiniteCpu(const at::Tensor& t) {
  using Bits = std::conditional_t<sizeof(T) == 4, uint32_t, uint64_t>;
  // The exponent field: bits [23, 31) of a float, [52, 63) of a double.
  constexpr Bits kExp = sizeof(T) == 4
                            ? static_cast<Bits>(0x7f800000u)
                            : static_cast<Bits>(0x7ff0000000000000ull);
  const T* p = t.data_ptr<T>();
  const int64_t n = t.numel();
  constexpr int64_t kChunk = 1 << 14;
  for (int64_t i0 = 0; i0 < n; i0 += kChunk) {
    const int64_t i1 = std::min(n, i0 + kChunk);
    Bits bad = 0;
    for (int64_t i = i0; i < i1; ++i) {
      Bits b;
      std::memcpy(&b, p + i, sizeof(b));
      bad |= static_cast<Bits>((b & kExp) == kExp);
    }
    if (bad) return false;
  }
  return true;
}

bool AllFinite(const at::Tensor& t) {
  if (t.device().is_cpu() && t.is_contiguous()) {
    if (t.scalar_type() == at::kFloat) return AllFiniteCpu<float>(t);
    if (t.scalar_type() == at::kDouble) return AllFiniteCpu<double>(t);
  }
  return at::isfinite(t).all().item<bool>();
}

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

}  // namespace

absl::Status CheckFiniteTensor(const at::Tensor& t, absl::string_view name,
                               absl::string_view what) {
  if (!AllFinite(t)) {
    return absl::InvalidArgumentError(
        absl::StrCat(name, ": ", what, " contains NaN or Inf"));
  }
  return absl::OkStatus();
}

int64_t KeepCount(double keep_ratio, int64_t n) {
  const long long k = std::llround(keep_ratio * static_cast<double>(n));
  return std::clamp<int64_t>(k, 0, n);
}

at::Tensor FusedScores(const at::Tensor& d, const at::Tensor& hinv_diag,
                       const TailorOptions& options) {
  return ScoresWithDiag(d, hinv_diag, options, options.scope);
}

at::Tensor SelectMask(const at::Tensor& scores, const TailorOptions& options) {
  switch (options.scope) {
    case Scope::kLayer:
      return SelectBlock(scores, options.keep_ratio);
    case Scope::kRow:
      return TopKMaskRows(scores,
                          KeepCount(options.keep_ratio, scores.size(1)));
    case Scope::kBlock: {
      std::vector<at::Tensor> parts;
      for (int64_t j = 0; j < scores.size(1); j += options.block_size) {
        const int64_t j2 = std::min(scores.size(1), j + options.block_size);
        parts.push_back(SelectBlock(scores.index({Slice(), Slice(j, j2)}),
                                    options.keep_ratio));
      }
      return at::cat(parts, 1);
    }
  }
  return at::Tensor();
}

int64_t PreparedHessian::bytes() const {
  int64_t n = 0;
  for (const at::Tensor* t : {&h, &hinv_diag, &u}) {
    if (t->defined()) n += t->numel() * t->element_size();
  }
  return n;
}

absl::StatusOr<PreparedHessian> PrepareHessian(const at::Tensor& h_in,
                                               const TailorOptions& options) {
  return CatchTorch(
      "prepare hessian", [&]() -> absl::StatusOr<PreparedHessian> {
        at::Tensor h = h_in.to(KernelType(options)).clone();
        at::Tensor diag = h.diagonal();
        at::Tensor dead = diag == 0;
        PreparedHessian out;
        out.dead_columns = dead.sum().item<int64_t>();
        diag.masked_fill_(dead, 1.0);
        const double mean_diag = diag.mean().item<double>();
        double damp = options.damp;
        for (;;) {
          at::Tensor damped = h.clone();
          damped.diagonal().add_(damp * mean_diag);
          // L L^T = J H J (J reverses the order); U = J L^-1 J.
          auto [l, info] = at::linalg_cholesky_ex(damped.flip({0, 1}));
          if (info.item<int64_t>() == 0) {
            at::Tensor linv = LowerInverse(std::move(l));
            if (linv.defined()) {
              out.u = linv.flip({0, 1}).contiguous();
              out.hinv_diag = ColumnSquareSums(out.u);
              out.h = damped;
              out.damp = damp;
              return out;
            }
          }
          const double next = damp > 0 ? damp * 10 : 1e-3;
          if (next > options.max_damp) {
            return absl::FailedPreconditionError(absl::StrCat(
                "Hessian is not positive definite even with damping ", damp,
                " (bound ", options.max_damp, ")"));
          }
          damp = next;
        }
      });
}

at::Tensor CompensateSequential(const at::Tensor& d0, const at::Tensor& mask,
                                const at::Tensor& u, int64_t block_size,
                                double* err_sq) {
  at::Tensor d = d0.contiguous().clone();
  const double e = CompensateSequentialInPlace(d, mask, u, block_size);
  if (err_sq != nullptr) *err_sq = e;
  return d;
}

std::pair<at::Tensor, at::Tensor> SelectAndCompensateBlocks(
    const at::Tensor& d0, const PreparedHessian& hessian,
    const TailorOptions& options, double* err_sq) {
  at::Tensor d = d0.contiguous().clone();
  at::Tensor mask = at::zeros(d.sizes(), d.options().dtype(at::kBool));
  // The block's mask from the current compensated D, U_jj^2 as diagonal.
  auto select = [&](int64_t i1, int64_t i2) {
    at::Tensor w1 = d.index({Slice(), Slice(i1, i2)}).contiguous();
    at::Tensor u1 = hessian.u.index({Slice(i1, i2), Slice(i1, i2)});
    at::Tensor m1 = SelectBlock(
        ScoresWithDiag(w1, u1.diagonal().pow(2), options, Scope::kBlock),
        options.keep_ratio);
    mask.index({Slice(), Slice(i1, i2)}).copy_(m1);
    return m1;
  };
  if (CpuFastPath(d)) {
    at::Tensor m1;
    BlockMask adaptive = [&](int64_t i1, int64_t i2) {
      m1 = select(i1, i2).contiguous();
      return std::pair<const bool*, int64_t>(m1.data_ptr<bool>(), i2 - i1);
    };
    const at::Tensor u = hessian.u.to(d.scalar_type());
    const double e =
        d.scalar_type() == at::kFloat
            ? SequentialCpu<float>(d, u, options.block_size, adaptive)
            : SequentialCpu<double>(d, u, options.block_size, adaptive);
    if (err_sq != nullptr) *err_sq = e;
    return {mask, d};
  }
  double e = 0;
  for (int64_t i1 = 0; i1 < d.size(1); i1 += options.block_size) {
    const int64_t i2 = std::min(d.size(1), i1 + options.block_size);
    at::Tensor m1 = select(i1, i2);
    at::Tensor w1 = d.index({Slice(), Slice(i1, i2)}).clone();
    at::Tensor u1 = hessian.u.index({Slice(i1, i2), Slice(i1, i2)});
    at::Tensor err1 = ObsBlock(w1, m1, u1);
    e += err1.to(at::kDouble).square().sum().item<double>();
    FinishBlock(d, w1, err1, hessian.u, i1, i2);
  }
  if (err_sq != nullptr) *err_sq = e;
  return {mask, d};
}

absl::StatusOr<at::Tensor> CompensateExact(const at::Tensor& d0,
                                           const at::Tensor& mask,
                                           const at::Tensor& h,
                                           int64_t chunk_bytes) {
  const int64_t rows = d0.size(0);
  at::Tensor out = at::zeros_like(d0);
  // G[r, :] = (H (D0_r * R_r))^T: row r's coupling of every column to the
  // reverted entries; the right-hand side is G[r, K].
  at::Tensor reverted = d0 * mask.logical_not();
  at::Tensor g = reverted.matmul(h);
  at::Tensor counts = mask.sum(1);
  const at::Tensor counts_cpu = counts.cpu();
  const int64_t* count_of = counts_cpu.data_ptr<int64_t>();
  const int64_t elem = d0.element_size();
  int64_t r1 = 0;
  while (r1 < rows) {
    // Grow the chunk while its padded systems fit the budget.
    int64_t r2 = r1;
    int64_t kmax = 0;
    while (r2 < rows) {
      const int64_t k = std::max<int64_t>(kmax, count_of[r2]);
      const int64_t need = (r2 - r1 + 1) * std::max<int64_t>(k, 1) *
                           std::max<int64_t>(k, 1) * elem * 3;
      if (r2 > r1 && need > chunk_bytes) break;
      kmax = k;
      ++r2;
    }
    if (kmax == 0) {
      r1 = r2;
      continue;
    }
    at::Tensor m = mask.index({Slice(r1, r2)});
    at::Tensor cnt = counts.index({Slice(r1, r2)});
    // Kept columns first, in increasing order (stable sort of the mask).
    at::Tensor idx = std::get<1>(m.to(at::kByte).sort(/*stable=*/true, 1, true))
                         .index({Slice(), Slice(0, kmax)});
    at::Tensor valid =
        at::arange(kmax, cnt.options()).unsqueeze(0) < cnt.unsqueeze(1);
    at::Tensor a = h.index({idx.unsqueeze(2), idx.unsqueeze(1)});
    at::Tensor pair = valid.unsqueeze(2) & valid.unsqueeze(1);
    at::Tensor eye = at::eye(kmax, a.options()).expand_as(a);
    a = at::where(pair, a, eye);
    at::Tensor b = at::where(valid, g.index({Slice(r1, r2)}).gather(1, idx),
                             at::zeros({}, g.options()));
    auto [l, info] = at::linalg_cholesky_ex(a);
    if (info.ne(0).any().item<bool>()) {
      return absl::FailedPreconditionError(
          "exact compensation: a kept-support block of H is not positive "
          "definite");
    }
    at::Tensor y = at::cholesky_solve(b.unsqueeze(2), l).squeeze(2);
    at::Tensor kept = d0.index({Slice(r1, r2)}).gather(1, idx) + y;
    kept = at::where(valid, kept, at::zeros({}, kept.options()));
    // Padded slots point at reverted columns and carry 0, so a scatter of the
    // whole row is exact.
    at::Tensor chunk = at::zeros_like(m, d0.options());
    chunk.scatter_(1, idx, kept);
    out.index({Slice(r1, r2)})
        .copy_(at::where(m, chunk, at::zeros({}, chunk.options())));
    r1 = r2;
  }
  return out;
}

double ReconstructionError(const at::Tensor& d0, const at::Tensor& d,
                           const at::Tensor& h) {
  at::Tensor e = (d0 - d).to(at::kDouble);
  return (e.matmul(h.to(at::kDouble)) * e).sum().item<double>();
}

double MaskOnlyError(const at::Tensor& d0, const at::Tensor& mask,
                     const at::Tensor& h, int64_t sample_rows,
                     bool* estimated) {
  const int64_t rows = d0.size(0);
  at::Tensor r = d0, m = mask;
  double scale = 1;
  *estimated = sample_rows < rows;
  if (*estimated) {
    at::Tensor idx = at::floor_divide(
        at::arange(sample_rows, at::TensorOptions().dtype(at::kLong)) * rows,
        sample_rows);
    idx = idx.to(d0.device());
    r = d0.index_select(0, idx);
    m = mask.index_select(0, idx);
    scale = static_cast<double>(rows) / static_cast<double>(sample_rows);
  }
  at::Tensor reverted = at::where(m, at::zeros({}, r.options()), r);
  if (!*estimated) {
    return ReconstructionError(reverted, at::zeros_like(reverted), h);
  }
  // An estimate: the GEMM in the kernel's type (no float64 copy of H), the
  // sums in float64.
  at::Tensor g = reverted.matmul(h.to(reverted.scalar_type()));
  return scale *
         (g.to(at::kDouble) * reverted.to(at::kDouble)).sum().item<double>();
}

namespace {

// Options, shapes and finiteness of a layer's weights; INVALID_ARGUMENT
// naming `name`.
absl::Status CheckLayerInputs(absl::string_view name, const at::Tensor& w_pre,
                              const at::Tensor& w_ft,
                              const TailorOptions& options) {
  if (absl::Status s = options.Validate(); !s.ok()) {
    return absl::InvalidArgumentError(absl::StrCat(name, ": ", s.message()));
  }
  if (w_pre.sizes() != w_ft.sizes()) {
    return absl::InvalidArgumentError(absl::StrCat(
        name, ": pre-trained shape ", c10::str(w_pre.sizes()),
        " differs from fine-tuned shape ", c10::str(w_ft.sizes())));
  }
  return CatchTorch(name, [&]() -> absl::Status {
    TAILOR_RETURN_IF_ERROR(
        CheckFiniteTensor(w_pre, name, "pre-trained tensor"));
    return CheckFiniteTensor(w_ft, name, "fine-tuned tensor");
  });
}

}  // namespace

absl::StatusOr<LayerResult> TailorLayer(absl::string_view name,
                                        const at::Tensor& w_pre,
                                        const at::Tensor& w_ft,
                                        const at::Tensor& hessian,
                                        const TailorOptions& options) {
  if (!hessian.defined()) {
    return TailorLayerPrepared(name, w_pre, w_ft, nullptr, options);
  }
  // The checks in TailorLayerPrepared's order, the Hessian's last.
  TAILOR_RETURN_IF_ERROR(CheckLayerInputs(name, w_pre, w_ft, options));
  const int64_t cols = w_ft.dim() == 2 ? w_ft.size(1) : w_ft.numel();
  if (w_ft.dim() != 2 || hessian.dim() != 2 || hessian.size(0) != cols ||
      hessian.size(1) != cols) {
    return absl::InvalidArgumentError(
        absl::StrCat(name, ": Hessian shape ", c10::str(hessian.sizes()),
                     " does not match the ", cols, " input columns of weight ",
                     c10::str(w_ft.sizes())));
  }
  TAILOR_ASSIGN_OR_RETURN(
      absl::StatusOr<PreparedHessian> prepared,
      CatchTorch(
          name, [&]() -> absl::StatusOr<absl::StatusOr<PreparedHessian>> {
            TAILOR_RETURN_IF_ERROR(CheckFiniteTensor(hessian, name, "Hessian"));
            return PrepareHessian(hessian.to(w_ft.device()), options);
          }));
  return TailorLayerPrepared(name, w_pre, w_ft, &prepared, options);
}

absl::StatusOr<LayerResult> TailorLayerPrepared(
    absl::string_view name, const at::Tensor& w_pre, const at::Tensor& w_ft,
    const absl::StatusOr<PreparedHessian>* hessian,
    const TailorOptions& options) {
  const auto start = std::chrono::steady_clock::now();
  TAILOR_RETURN_IF_ERROR(CheckLayerInputs(name, w_pre, w_ft, options));
  return CatchTorch(name, [&]() -> absl::StatusOr<LayerResult> {
    const at::ScalarType type = KernelType(options);
    at::Tensor d0_full = (w_ft.to(type) - w_pre.to(type));
    // Everything but a 2-D matrix is scored as one row.
    at::Tensor d0 = d0_full.dim() == 2 ? d0_full : d0_full.reshape({1, -1});
    LayerResult result;
    LayerStats& stats = result.stats;
    stats.count = d0.numel();
    stats.error_mask_only = std::numeric_limits<double>::quiet_NaN();
    stats.error_compensated = std::numeric_limits<double>::quiet_NaN();

    const PreparedHessian* prepared = nullptr;
    if (hessian != nullptr) {
      const int64_t c =
          hessian->ok() ? (*hessian)->u.size(0) : d0_full.size(-1);
      if (d0_full.dim() != 2 || c != d0.size(1)) {
        return absl::InvalidArgumentError(absl::StrCat(
            name, ": Hessian shape [", c, ", ", c, "] does not match the ",
            d0.size(1), " input columns of weight ",
            c10::str(d0_full.sizes())));
      }
      stats.has_hessian = true;
      if (hessian->ok()) {
        prepared = &**hessian;
        stats.damp = prepared->damp;
        stats.dead_columns = prepared->dead_columns;
      } else {
        stats.fallback_reason = std::string(hessian->status().message());
      }
    }

    at::Tensor mask, delta;
    // ||Err||_F^2 of sequential compensation, when it ran.
    std::optional<double> err_sq;
    if (prepared && options.scope == Scope::kBlock &&
        options.compensation == Compensation::kSequential) {
      double e = 0;
      std::tie(mask, delta) =
          SelectAndCompensateBlocks(d0, *prepared, options, &e);
      err_sq = e;
      stats.compensation = "sequential";
      const int64_t sample =
          options.exact_errors ? d0.size(0) : kErrorSampleRows;
      stats.error_mask_only = MaskOnlyError(d0, mask, prepared->h, sample,
                                            &stats.error_mask_only_estimated);
    } else {
      TailorOptions select = options;
      if (!prepared) select.omega = 1.0;
      mask = SelectMask(
          ScoresWithDiag(d0, prepared ? prepared->hinv_diag : at::Tensor(),
                         select, options.scope),
          options);
      if (prepared) {
        // Before any compensation: the sequential one runs in place on d0.
        const int64_t sample =
            options.exact_errors ? d0.size(0) : kErrorSampleRows;
        stats.error_mask_only = MaskOnlyError(d0, mask, prepared->h, sample,
                                              &stats.error_mask_only_estimated);
      }
      if (prepared && options.compensation == Compensation::kSequential) {
        d0 = d0.contiguous();
        err_sq = CompensateSequentialInPlace(d0, mask, prepared->u,
                                             options.block_size);
        delta = d0;
        d0 = at::Tensor();  // now the compensated delta
        stats.compensation = "sequential";
      } else if (prepared && options.compensation == Compensation::kExact) {
        absl::StatusOr<at::Tensor> exact =
            CompensateExact(d0, mask, prepared->h, options.exact_chunk_bytes);
        if (exact.ok()) {
          delta = *exact;
          stats.compensation = "exact";
        } else {
          stats.fallback_reason = std::string(exact.status().message());
        }
      }
      if (!delta.defined()) {
        delta = at::where(mask, d0, at::zeros({}, d0.options()));
      }
    }
    // The uncompensated delta, again if the sequential loop consumed it.
    auto original = [&] {
      if (d0.defined()) return d0;
      at::Tensor d = w_ft.to(type) - w_pre.to(type);
      return d.dim() == 2 ? d : d.reshape({1, -1});
    };
    if (!AllFinite(delta.contiguous())) {
      // Never hand out NaN: fall back to the mask alone.
      stats.fallback_reason = "compensation produced non-finite values";
      stats.compensation = "none";
      err_sq.reset();
      at::Tensor d = original();
      delta = at::where(mask, d, at::zeros({}, d.options()));
    }
    if (prepared) {
      if (stats.compensation == "none") {
        stats.error_compensated = stats.error_mask_only;
        stats.error_compensated_estimated = stats.error_mask_only_estimated;
      } else if (err_sq) {
        stats.error_compensated = *err_sq;
      } else {
        stats.error_compensated = ReconstructionError(d0, delta, prepared->h);
      }
    }
    stats.kept = mask.sum().item<int64_t>();
    result.mask = mask.view(d0_full.sizes());
    result.delta = delta.view(d0_full.sizes());
    stats.seconds =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start)
            .count();
    return result;
  });
}

}  // namespace tailor
