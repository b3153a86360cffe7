#include "fusion/tailor_scores.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "fusion/top_k.h"

namespace tailor {
namespace {

using at::indexing::Slice;

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

}  // namespace

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

namespace {

// `scores` with the dead columns' entries at -inf.
at::Tensor ExcludeDead(const at::Tensor& scores, const at::Tensor& dead) {
  return scores.masked_fill(dead.to(scores.device()).unsqueeze(0),
                            -std::numeric_limits<double>::infinity());
}

int64_t LiveColumns(const at::Tensor& dead) {
  return dead.numel() - dead.sum().item<int64_t>();
}

}  // namespace

at::Tensor LiveScores(const at::Tensor& d, const at::Tensor& diag,
                      const TailorOptions& options, Scope scope,
                      const at::Tensor& dead) {
  if (!dead.defined()) return ScoresWithDiag(d, diag, options, scope);
  at::Tensor out = at::full(d.sizes(), -std::numeric_limits<double>::infinity(),
                            d.options());
  const at::Tensor live =
      at::logical_not(dead).to(d.device()).nonzero().view(-1);
  if (live.numel() == 0) return out;
  const at::Tensor sub = ScoresWithDiag(
      d.index_select(1, live),
      diag.defined() ? diag.index_select(0, live.to(diag.device()))
                     : at::Tensor(),
      options, scope);
  out.index_copy_(1, live, sub);
  return out;
}

at::Tensor SelectBlock(const at::Tensor& scores, double keep_ratio,
                       const at::Tensor& dead) {
  if (!dead.defined()) return SelectBlock(scores, keep_ratio);
  const int64_t k = std::min(KeepCount(keep_ratio, scores.numel()),
                             scores.size(0) * LiveColumns(dead));
  return TopKMaskFlat(ExcludeDead(scores, dead), k);
}

at::Tensor SelectMask(const at::Tensor& scores, const TailorOptions& options,
                      const at::Tensor& dead) {
  if (!dead.defined()) return SelectMask(scores, options);
  switch (options.scope) {
    case Scope::kLayer:
      return SelectBlock(scores, options.keep_ratio, dead);
    case Scope::kRow:
      return TopKMaskRows(
          ExcludeDead(scores, dead),
          std::min(KeepCount(options.keep_ratio, scores.size(1)),
                   LiveColumns(dead)));
    case Scope::kBlock: {
      std::vector<at::Tensor> parts;
      for (int64_t j = 0; j < scores.size(1); j += options.block_size) {
        const int64_t j2 = std::min(scores.size(1), j + options.block_size);
        parts.push_back(SelectBlock(scores.index({Slice(), Slice(j, j2)}),
                                    options.keep_ratio,
                                    dead.index({Slice(j, j2)})));
      }
      return at::cat(parts, 1);
    }
  }
  return at::Tensor();
}

}  // namespace tailor
