#ifndef TAILOR_UTIL_BF16_BITS_H_
#define TAILOR_UTIL_BF16_BITS_H_

// BF16 <-> float32 on raw bits, inline for the streamed merge loops (no
// LibTorch: plain bit operations that vectorise).

#include <cstdint>
#include <cstring>

namespace tailor {

// The float32 whose high half is `b` (exact).
inline float Bf16ToFloat(uint16_t b) {
  const uint32_t bits = static_cast<uint32_t>(b) << 16;
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

// c10::BFloat16's round-to-nearest-even, for a non-NaN `f` (Inf stays Inf);
// a NaN must be handled by the caller.
inline uint16_t FloatToBf16(float f) {
  uint32_t bits;
  std::memcpy(&bits, &f, 4);
  const uint32_t bias = ((bits >> 16) & 1) + 0x7fff;
  return static_cast<uint16_t>((bits + bias) >> 16);
}

}  // namespace tailor

#endif  // TAILOR_UTIL_BF16_BITS_H_
