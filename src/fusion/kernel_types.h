#ifndef TAILOR_FUSION_KERNEL_TYPES_H_
#define TAILOR_FUSION_KERNEL_TYPES_H_

// Two small rules the Model Tailor kernel's files share (tailor_kernel,
// tailor_scores, obs_compensation, hessian_prep).

#include <ATen/core/Tensor.h>

#include "fusion/layer_options.h"

namespace tailor {

// The type the kernel computes in: float64 with options.float64, else
// float32.
inline at::ScalarType KernelType(const TailorOptions& options) {
  return options.float64 ? at::kDouble : at::kFloat;
}

// Whether `t` takes the kernel's scalar CPU loops: a CPU tensor of float32
// or float64 (the loops give the bits of the tensor-op path).
inline bool CpuFastPath(const at::Tensor& t) {
  return t.device().is_cpu() &&
         (t.scalar_type() == at::kFloat || t.scalar_type() == at::kDouble);
}

}  // namespace tailor

#endif  // TAILOR_FUSION_KERNEL_TYPES_H_
