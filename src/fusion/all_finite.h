#ifndef TAILOR_FUSION_ALL_FINITE_H_
#define TAILOR_FUSION_ALL_FINITE_H_

#include <ATen/core/Tensor.h>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"

namespace tailor {

// Whether every entry of `t` is finite. A contiguous CPU float32/float64
// tensor is checked by an integer OR-reduction over its exponent bits, with
// no n-sized temporary; anything else through at::isfinite.
bool AllFinite(const at::Tensor& t);

// INVALID_ARGUMENT "<name>: <what> contains NaN or Inf" unless all finite.
absl::Status CheckFiniteTensor(const at::Tensor& t, absl::string_view name,
                               absl::string_view what);

}  // namespace tailor

#endif  // TAILOR_FUSION_ALL_FINITE_H_
