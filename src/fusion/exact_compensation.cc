#include "fusion/exact_compensation.h"

#include <ATen/ATen.h>

#include <algorithm>

namespace tailor {
namespace {

using at::indexing::Slice;

}  // namespace

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

}  // namespace tailor
