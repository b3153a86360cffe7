#ifndef TAILOR_FUSION_LAYER_ERROR_H_
#define TAILOR_FUSION_LAYER_ERROR_H_

// The Model Tailor kernel's error yardstick (src/DESIGN.md §2.1): the
// layer reconstruction error E(D) = tr((D0 - D) H (D0 - D)^T) its report
// gives before and after compensation.

#include <ATen/core/Tensor.h>

#include <cstdint>

namespace tailor {

// Rows sampled by the mask-only error estimate.
inline constexpr int64_t kErrorSampleRows = 64;

// tr((d0 - d) h (d0 - d)^T), accumulated in float64.
double ReconstructionError(const at::Tensor& d0, const at::Tensor& d,
                           const at::Tensor& h);

// The mask-only error tr(R h R^T), R = d0 where `mask` is false (else 0),
// over `sample_rows` evenly spaced rows (row floor(i * rows / s)) scaled by
// rows / s; exact when sample_rows >= rows. Sets *estimated accordingly.
double MaskOnlyError(const at::Tensor& d0, const at::Tensor& mask,
                     const at::Tensor& h, int64_t sample_rows, bool* estimated);

}  // namespace tailor

#endif  // TAILOR_FUSION_LAYER_ERROR_H_
