#include "fusion/streamed_bf16_loops.h"

#include <algorithm>
#include <cstring>

#include "absl/base/attributes.h"
#include "util/bf16_bits.h"

namespace tailor::streamed_internal {
namespace {

// Bounds the 32-bit counts of a block.
constexpr int64_t kBitsBlock = int64_t{1} << 20;

inline uint32_t Bf16NonFinite(uint16_t b) {
  return static_cast<uint32_t>((b & 0x7f80u) == 0x7f80u);
}

// Bf16OutputChunk's loop over [j0, end), one method each (kMagnitude: the
// delta is D on the mask; else TIES's (mask ? D : +0) * lambda, kept where
// non-zero): branch-free, so that it vectorises; inlined into each of the
// caller's clones, so compiled for its target. Adds to *bad, *kept, *ties.
template <bool kMagnitude>
ABSL_ATTRIBUTE_ALWAYS_INLINE inline void OutputBlock(
    const uint16_t* pb, const uint16_t* fb, int64_t j0, int64_t end, uint32_t a,
    uint32_t b, uint32_t width, uint32_t take_ties, float lambda, uint16_t* o,
    uint32_t* bad_out, uint32_t* kept_out, uint32_t* ties_out) {
  uint32_t bad = 0, block_kept = 0, block_ties = 0;
  for (int64_t j = j0; j < end; ++j) {
    bad |= Bf16NonFinite(pb[j]) | Bf16NonFinite(fb[j]);
    const float pf = Bf16ToFloat(pb[j]);
    const float d = Bf16ToFloat(fb[j]) - pf;
    uint32_t bits;
    std::memcpy(&bits, &d, sizeof(bits));
    const uint32_t key = bits | 0x80000000u;
    const uint32_t tie = (key - b) <= width;
    const uint32_t mask = static_cast<uint32_t>(key > a) | (tie & take_ties);
    block_ties += tie;
    float delta = d;
    uint32_t keep = mask;
    if constexpr (!kMagnitude) {
      // (mask ? D : +0) * lambda, on the bits; kept where non-zero.
      const uint32_t masked_bits = bits & (0u - mask);
      float masked;
      std::memcpy(&masked, &masked_bits, sizeof(masked));
      delta = masked * lambda;
      uint32_t delta_bits;
      std::memcpy(&delta_bits, &delta, sizeof(delta_bits));
      keep = (delta_bits << 1) != 0;
    }
    block_kept += keep;
    const uint16_t sum = FloatToBf16(pf + delta);
    const uint16_t sel = static_cast<uint16_t>(0u - keep);
    o[j] = static_cast<uint16_t>((sum & sel) | (pb[j] & ~sel));
  }
  *bad_out |= bad;
  *kept_out = block_kept;
  *ties_out = block_ties;
}

}  // namespace

__attribute__((target_clones("avx2", "default"))) void Bf16DeltaKeys(
    const uint16_t* pb, const uint16_t* fb, int64_t m, uint32_t* k,
    uint32_t* bad_out, uint32_t* bad_delta_out, uint32_t* lo_out,
    uint32_t* hi_out) {
  uint32_t bad = 0, bad_delta = 0, lo = ~0u, hi = 0;
  for (int64_t j = 0; j < m; ++j) {
    bad |= Bf16NonFinite(pb[j]) | Bf16NonFinite(fb[j]);
    const float d = Bf16ToFloat(fb[j]) - Bf16ToFloat(pb[j]);
    uint32_t bits;
    std::memcpy(&bits, &d, sizeof(bits));
    bad_delta |= static_cast<uint32_t>((bits & 0x7f800000u) == 0x7f800000u);
    const uint32_t key = bits | 0x80000000u;
    k[j] = key;
    lo = key < lo ? key : lo;
    hi = key > hi ? key : hi;
  }
  *bad_out = bad;
  *bad_delta_out = bad_delta;
  *lo_out = lo;
  *hi_out = hi;
}

__attribute__((target_clones("avx2", "default"))) int64_t Bf16OutputChunk(
    const uint16_t* pb, const uint16_t* fb, int64_t m, uint32_t a, uint32_t b,
    uint32_t width, uint32_t take_ties, bool magnitude, float lambda,
    uint16_t* o, int64_t* ties_out, uint32_t* bad_out) {
  uint32_t bad = 0;
  int64_t kept = 0, ties = 0;
  for (int64_t j0 = 0; j0 < m; j0 += kBitsBlock) {
    const int64_t end = std::min(m, j0 + kBitsBlock);
    uint32_t block_kept = 0, block_ties = 0;
    if (magnitude) {
      OutputBlock<true>(pb, fb, j0, end, a, b, width, take_ties, lambda, o,
                        &bad, &block_kept, &block_ties);
    } else {
      OutputBlock<false>(pb, fb, j0, end, a, b, width, take_ties, lambda, o,
                         &bad, &block_kept, &block_ties);
    }
    kept += block_kept;
    ties += block_ties;
  }
  *ties_out = ties;
  *bad_out = bad;
  return kept;
}

}  // namespace tailor::streamed_internal
