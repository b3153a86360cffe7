#include "fusion/all_finite.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <type_traits>

#include "absl/strings/str_cat.h"

namespace tailor {
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

}  // namespace

bool AllFinite(const at::Tensor& t) {
  if (t.device().is_cpu() && t.is_contiguous()) {
    if (t.scalar_type() == at::kFloat) return AllFiniteCpu<float>(t);
    if (t.scalar_type() == at::kDouble) return AllFiniteCpu<double>(t);
  }
  return at::isfinite(t).all().item<bool>();
}

absl::Status CheckFiniteTensor(const at::Tensor& t, absl::string_view name,
                               absl::string_view what) {
  if (!AllFinite(t)) {
    return absl::InvalidArgumentError(
        absl::StrCat(name, ": ", what, " contains NaN or Inf"));
  }
  return absl::OkStatus();
}

}  // namespace tailor
