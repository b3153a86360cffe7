#ifndef TAILOR_FUSION_STREAMED_ELEMENTWISE_H_
#define TAILOR_FUSION_STREAMED_ELEMENTWISE_H_

// The elementwise helpers of the streamed threshold merges
// (streamed_merge.cc, streamed_chunk_io.cc), in the compute type T (float
// or double): finiteness and selections on the bits, branch-free so that
// the loops using them vectorise.

#include <c10/core/ScalarType.h>

#include <cstdint>
#include <cstring>
#include <type_traits>

namespace tailor::streamed_internal {

template <typename T>
using BitsOf = std::conditional_t<sizeof(T) == 4, uint32_t, uint64_t>;

// The ATen dtype of the compute type T.
template <typename T>
constexpr at::ScalarType kScalar =
    std::is_same_v<T, float> ? at::kFloat : at::kDouble;

// Whether x is NaN or +-Inf (all exponent bits set), branch-free.
template <typename T>
inline bool NonFinite(T x) {
  constexpr BitsOf<T> kExp = static_cast<BitsOf<T>>(
      sizeof(T) == 4 ? 0x7f800000ull : 0x7ff0000000000000ull);
  BitsOf<T> bits;
  std::memcpy(&bits, &x, sizeof(bits));
  return (bits & kExp) == kExp;
}

template <typename T>
bool AllFinite(const T* x, int64_t m) {
  uint32_t bad = 0;
  for (int64_t i = 0; i < m; ++i) bad |= NonFinite(x[i]);
  return bad == 0;
}

// ATen's sign: 1, -1 or 0.
template <typename T>
inline T Sign(T x) {
  return static_cast<T>((T(0) < x) - (x < T(0)));
}

// FuseTensor: float32 pre + float32 delta where the mask holds, float32
// pre elsewhere. Both sides are computed, then selected on the bits:
// branch-free, so that the loops vectorise (the compiler does not
// if-convert a conditional floating add).
template <typename T>
inline float Fuse(bool mask, T pre, T delta) {
  const float pf = static_cast<float>(pre);
  const float sum = pf + static_cast<float>(delta);
  uint32_t a, b;
  std::memcpy(&a, &sum, sizeof(a));
  std::memcpy(&b, &pf, sizeof(b));
  const uint32_t sel = 0u - static_cast<uint32_t>(mask);
  const uint32_t r = (a & sel) | (b & ~sel);
  float out;
  std::memcpy(&out, &r, sizeof(out));
  return out;
}

// mask ? x : +0, on the bits.
template <typename T>
inline T KeepOrZero(bool mask, T x) {
  BitsOf<T> bits;
  std::memcpy(&bits, &x, sizeof(bits));
  bits &= BitsOf<T>{0} - static_cast<BitsOf<T>>(mask);
  T out;
  std::memcpy(&out, &bits, sizeof(out));
  return out;
}

// x != 0 on the bits: false for +-0 only (NaN != 0 holds too).
template <typename T>
inline bool NonZero(T x) {
  BitsOf<T> bits;
  std::memcpy(&bits, &x, sizeof(bits));
  return (bits << 1) != 0;
}

}  // namespace tailor::streamed_internal

#endif  // TAILOR_FUSION_STREAMED_ELEMENTWISE_H_
