#ifndef TAILOR_FUSION_EXACT_COMPENSATION_H_
#define TAILOR_FUSION_EXACT_COMPENSATION_H_

// Exact compensation of the kept entries for the Model Tailor kernel
// (src/DESIGN.md §2.1, compensation "exact").

#include <ATen/core/Tensor.h>

#include <cstdint>

#include "absl/status/statusor.h"

namespace tailor {

// Per-row least squares on the kept support:
// D_r[K] = D0_r[K] + H_KK^-1 H_KR D0_r[R], batched in row chunks whose
// scratch stays under `chunk_bytes`. FAILED_PRECONDITION when a kept-support
// block of H is not positive definite.
absl::StatusOr<at::Tensor> CompensateExact(const at::Tensor& d0,
                                           const at::Tensor& mask,
                                           const at::Tensor& h,
                                           int64_t chunk_bytes);

}  // namespace tailor

#endif  // TAILOR_FUSION_EXACT_COMPENSATION_H_
