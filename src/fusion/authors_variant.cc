#include "fusion/authors_variant.h"

#include <ATen/ATen.h>

#include <algorithm>

#include "fusion/obs_compensation.h"
#include "fusion/top_k.h"

namespace tailor {
namespace {

// (x - mean) / std per row, std the sample standard deviation (divisor
// n - 1, as torch.std); rows with std 0, and every row of a one-column x,
// map to 0.
at::Tensor SampleZScoreRows(const at::Tensor& x) {
  const int64_t n = x.size(1);
  if (n < 2) return at::zeros_like(x);
  at::Tensor centered = x - x.mean(1, /*keepdim=*/true);
  at::Tensor std =
      (centered.pow(2).sum(1, /*keepdim=*/true) / static_cast<double>(n - 1))
          .sqrt();
  // where() picks the quotient only where std > 0.
  return at::where(std > 0, centered / std, at::zeros_like(x));
}

}  // namespace

int64_t AuthorsCodeRevertCount(double keep_ratio, int64_t n) {
  const auto at_threshold =
      static_cast<int64_t>(static_cast<double>(n) * (1.0 - keep_ratio));
  return std::clamp<int64_t>(at_threshold + 1, 0, n);
}

at::Tensor AuthorsCodeScores(const at::Tensor& d0, const at::Tensor& w,
                             const at::Tensor& u_diag, double omega) {
  at::Tensor salience = d0.abs();
  at::Tensor sensitivity = w.pow(2) / u_diag.pow(2).unsqueeze(0);
  return omega * SampleZScoreRows(salience) +
         (1.0 - omega) * SampleZScoreRows(sensitivity);
}

std::pair<at::Tensor, at::Tensor> AuthorsCodeLayer(
    const at::Tensor& d0, const at::Tensor& w_pre,
    const PreparedHessian& hessian, const TailorOptions& options) {
  const at::Tensor u_diag = hessian.u.diagonal();
  // Block [i1, i2)'s mask from the fine-tuned weights as compensated so
  // far (Wp + D) and the original delta.
  BlockSelector select = [&](const at::Tensor& d, int64_t i1, int64_t i2) {
    const int64_t width = i2 - i1;
    at::Tensor w1 = w_pre.narrow(1, i1, width) + d.narrow(1, i1, width);
    at::Tensor scores =
        AuthorsCodeScores(d0.narrow(1, i1, width), w1,
                          u_diag.narrow(0, i1, width), options.omega);
    const int64_t n = scores.numel();
    return TopKMaskFlat(scores,
                        n - AuthorsCodeRevertCount(options.keep_ratio, n));
  };
  return CompensateAdaptiveBlocks(d0, hessian.u, options.block_size, select,
                                  ObsSign::kPlus);
}

}  // namespace tailor
