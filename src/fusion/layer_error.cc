#include "fusion/layer_error.h"

#include <ATen/ATen.h>

namespace tailor {

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

}  // namespace tailor
