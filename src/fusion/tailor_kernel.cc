#include "fusion/tailor_kernel.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <limits>

#include "absl/strings/str_cat.h"
#include "util/status_macros.h"
#include "util/torch_status.h"

namespace tailor {
namespace {

using at::indexing::Slice;

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

at::Tensor ScoresWithDiag(const at::Tensor& d, const at::Tensor& diag,
                          const TailorOptions& options, Scope scope) {
  at::Tensor salience = d.abs();
  if (!diag.defined() || options.omega >= 1.0) {
    return Normalize(salience, options, scope);
  }
  at::Tensor sensitivity = d.pow(2) / (2.0 * diag.unsqueeze(0));
  return options.omega * Normalize(salience, options, scope) +
         (1.0 - options.omega) * Normalize(sensitivity, options, scope);
}

// Mask of the k highest entries of each row of `scores` (n x m); ties go to
// the lower column (stable sort).
at::Tensor TopKRows(const at::Tensor& scores, int64_t k) {
  at::Tensor mask =
      at::zeros(scores.sizes(), scores.options().dtype(at::kBool));
  if (k <= 0) return mask;
  at::Tensor order =
      std::get<1>(scores.sort(/*stable=*/true, /*dim=*/1, /*descending=*/true));
  mask.scatter_(1, order.index({Slice(), Slice(0, k)}), true);
  return mask;
}

at::Tensor SelectBlock(const at::Tensor& scores, double keep_ratio) {
  return TopKRows(scores.reshape({1, -1}),
                  KeepCount(keep_ratio, scores.numel()))
      .view(scores.sizes());
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

}  // namespace

absl::Status CheckFiniteTensor(const at::Tensor& t, absl::string_view name,
                               absl::string_view what) {
  if (!at::isfinite(t).all().item<bool>()) {
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
      return TopKRows(scores, KeepCount(options.keep_ratio, scores.size(1)));
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
          auto [l, info] = at::linalg_cholesky_ex(damped);
          if (info.item<int64_t>() == 0) {
            at::Tensor hinv = at::cholesky_inverse(l);
            auto [u, info_u] = at::linalg_cholesky_ex(hinv, /*upper=*/true);
            if (info_u.item<int64_t>() == 0 &&
                at::isfinite(u).all().item<bool>()) {
              out.h = damped;
              out.hinv_diag = hinv.diagonal().clone();
              out.u = u;
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
                                const at::Tensor& u, int64_t block_size) {
  at::Tensor d = d0.clone();
  for (int64_t i1 = 0; i1 < d.size(1); i1 += block_size) {
    const int64_t i2 = std::min(d.size(1), i1 + block_size);
    at::Tensor w1 = d.index({Slice(), Slice(i1, i2)}).clone();
    at::Tensor err1 = ObsBlock(w1, mask.index({Slice(), Slice(i1, i2)}),
                               u.index({Slice(i1, i2), Slice(i1, i2)}));
    FinishBlock(d, w1, err1, u, i1, i2);
  }
  return d;
}

std::pair<at::Tensor, at::Tensor> SelectAndCompensateBlocks(
    const at::Tensor& d0, const PreparedHessian& hessian,
    const TailorOptions& options) {
  at::Tensor d = d0.clone();
  at::Tensor mask = at::zeros(d.sizes(), d.options().dtype(at::kBool));
  for (int64_t i1 = 0; i1 < d.size(1); i1 += options.block_size) {
    const int64_t i2 = std::min(d.size(1), i1 + options.block_size);
    at::Tensor w1 = d.index({Slice(), Slice(i1, i2)}).clone();
    at::Tensor u1 = hessian.u.index({Slice(i1, i2), Slice(i1, i2)});
    at::Tensor m1 = SelectBlock(
        ScoresWithDiag(w1, u1.diagonal().pow(2), options, Scope::kBlock),
        options.keep_ratio);
    mask.index({Slice(), Slice(i1, i2)}).copy_(m1);
    at::Tensor err1 = ObsBlock(w1, m1, u1);
    FinishBlock(d, w1, err1, hessian.u, i1, i2);
  }
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

absl::StatusOr<LayerResult> TailorLayer(absl::string_view name,
                                        const at::Tensor& w_pre,
                                        const at::Tensor& w_ft,
                                        const at::Tensor& hessian,
                                        const TailorOptions& options) {
  const auto start = std::chrono::steady_clock::now();
  if (absl::Status s = options.Validate(); !s.ok()) {
    return absl::InvalidArgumentError(absl::StrCat(name, ": ", s.message()));
  }
  if (w_pre.sizes() != w_ft.sizes()) {
    return absl::InvalidArgumentError(absl::StrCat(
        name, ": pre-trained shape ", c10::str(w_pre.sizes()),
        " differs from fine-tuned shape ", c10::str(w_ft.sizes())));
  }
  return CatchTorch(name, [&]() -> absl::StatusOr<LayerResult> {
    TAILOR_RETURN_IF_ERROR(
        CheckFiniteTensor(w_pre, name, "pre-trained tensor"));
    TAILOR_RETURN_IF_ERROR(CheckFiniteTensor(w_ft, name, "fine-tuned tensor"));
    const at::ScalarType type = KernelType(options);
    at::Tensor d0_full = (w_ft.to(type) - w_pre.to(type));
    // Everything but a 2-D matrix is scored as one row.
    at::Tensor d0 = d0_full.dim() == 2 ? d0_full : d0_full.reshape({1, -1});
    LayerResult result;
    LayerStats& stats = result.stats;
    stats.count = d0.numel();
    stats.error_mask_only = std::numeric_limits<double>::quiet_NaN();
    stats.error_compensated = std::numeric_limits<double>::quiet_NaN();

    std::optional<PreparedHessian> prepared;
    if (hessian.defined()) {
      if (d0_full.dim() != 2 || hessian.dim() != 2 ||
          hessian.size(0) != d0.size(1) || hessian.size(1) != d0.size(1)) {
        return absl::InvalidArgumentError(absl::StrCat(
            name, ": Hessian shape ", c10::str(hessian.sizes()),
            " does not match the ", d0.size(1), " input columns of weight ",
            c10::str(d0_full.sizes())));
      }
      TAILOR_RETURN_IF_ERROR(CheckFiniteTensor(hessian, name, "Hessian"));
      stats.has_hessian = true;
      absl::StatusOr<PreparedHessian> p =
          PrepareHessian(hessian.to(d0.device()), options);
      if (p.ok()) {
        prepared = std::move(*p);
        stats.damp = prepared->damp;
        stats.dead_columns = prepared->dead_columns;
      } else {
        stats.fallback_reason = std::string(p.status().message());
      }
    }

    at::Tensor mask, delta;
    if (prepared && options.scope == Scope::kBlock &&
        options.compensation == Compensation::kSequential) {
      std::tie(mask, delta) = SelectAndCompensateBlocks(d0, *prepared, options);
      stats.compensation = "sequential";
    } else {
      TailorOptions select = options;
      if (!prepared) select.omega = 1.0;
      mask = SelectMask(
          ScoresWithDiag(d0, prepared ? prepared->hinv_diag : at::Tensor(),
                         select, options.scope),
          options);
      delta = at::where(mask, d0, at::zeros({}, d0.options()));
      if (prepared && options.compensation == Compensation::kSequential) {
        delta = CompensateSequential(d0, mask, prepared->u, options.block_size);
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
    }
    if (!at::isfinite(delta).all().item<bool>()) {
      // Never hand out NaN: fall back to the mask alone.
      stats.fallback_reason = "compensation produced non-finite values";
      stats.compensation = "none";
      delta = at::where(mask, d0, at::zeros({}, d0.options()));
    }
    if (prepared) {
      stats.error_mask_only = ReconstructionError(
          d0, at::where(mask, d0, at::zeros({}, d0.options())), prepared->h);
      stats.error_compensated = ReconstructionError(d0, delta, prepared->h);
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
