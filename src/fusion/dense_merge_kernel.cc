#include "fusion/dense_merge_kernel.h"

#include <ATen/Parallel.h>

#include <atomic>
#include <cstring>

#include "util/bf16_bits.h"

namespace tailor {
namespace {

constexpr uint16_t kBf16Exp = 0x7f80;
constexpr uint32_t kF32Exp = 0x7f800000u;

// The one-task loop of TaskArithmeticBf16Chunk over [begin, end): branch-free
// so that it vectorises, and compiled for AVX2 as well as the baseline (the
// loader picks one by the CPU; the same IEEE float32 operations, no FMA --
// this file is built with -ffp-contract=off -- so the same bits either
// way). Returns the kept count and sets *nonfinite when an input or fused
// value is not finite.
__attribute__((target_clones("avx2", "default"))) uint32_t OneTaskRange(
    const uint16_t* pre, const uint16_t* ft, int64_t begin, int64_t end,
    float lf, uint16_t* out, uint32_t* nonfinite_out) {
  uint32_t nonfinite = 0;
  uint32_t kept32 = 0;  // a range is at most a chunk (< 2^32)
  for (int64_t i = begin; i < end; ++i) {
    const uint32_t pbits = static_cast<uint32_t>(pre[i]) << 16;
    const uint32_t fbits = static_cast<uint32_t>(ft[i]) << 16;
    nonfinite |= static_cast<uint32_t>((pbits & kF32Exp) == kF32Exp) |
                 static_cast<uint32_t>((fbits & kF32Exp) == kF32Exp);
    float p, f;
    std::memcpy(&p, &pbits, 4);
    std::memcpy(&f, &fbits, 4);
    const float delta = (f - p) * lf;
    const float sum = p + delta;
    uint32_t sbits;
    std::memcpy(&sbits, &sum, 4);
    // fused = delta != 0 ? p + delta : p, as a bit select.
    const uint32_t keep = static_cast<uint32_t>(delta != 0.0f);
    const uint32_t m = 0u - keep;
    const uint32_t bits = (sbits & m) | (pbits & ~m);
    kept32 += keep;
    nonfinite |= static_cast<uint32_t>((bits & kF32Exp) == kF32Exp);
    const uint32_t bias = ((bits >> 16) & 1) + 0x7fff;
    out[i] = static_cast<uint16_t>((bits + bias) >> 16);
  }
  *nonfinite_out = nonfinite;
  return kept32;
}

}  // namespace

bool TaskArithmeticBf16Chunk(const uint16_t* pre,
                             const std::vector<const uint16_t*>& fts, int64_t n,
                             double lambda, uint16_t* out, int64_t* kept) {
  // A tensor times a double scalar computes in float32 with the scalar
  // rounded to float32 (ATen's opmath for float is float).
  const float lf = static_cast<float>(lambda);
  std::atomic<int64_t> total{0};
  std::atomic<bool> bad{false};
  const size_t tasks = fts.size();
  at::parallel_for(0, n, 1 << 15, [&](int64_t begin, int64_t end) {
    int64_t count = 0;
    uint32_t nonfinite = 0;
    if (tasks == 1) {
      // The common case (OneTaskRange).
      count = OneTaskRange(pre, fts[0], begin, end, lf, out, &nonfinite);
      if (nonfinite) bad.store(true, std::memory_order_relaxed);
      total.fetch_add(count, std::memory_order_relaxed);
      return;
    }
    for (int64_t i = begin; i < end; ++i) {
      const uint16_t pb = pre[i];
      nonfinite |= static_cast<uint32_t>((pb & kBf16Exp) == kBf16Exp);
      const float p = Bf16ToFloat(pb);
      const uint16_t f0 = fts[0][i];
      nonfinite |= static_cast<uint32_t>((f0 & kBf16Exp) == kBf16Exp);
      float sum = Bf16ToFloat(f0) - p;
      for (size_t t = 1; t < tasks; ++t) {
        const uint16_t ft = fts[t][i];
        nonfinite |= static_cast<uint32_t>((ft & kBf16Exp) == kBf16Exp);
        sum = sum + (Bf16ToFloat(ft) - p);
      }
      const float delta = sum * lf;
      const bool keep = delta != 0.0f;
      count += keep;
      const float fused = keep ? p + delta : p;
      uint32_t bits;
      std::memcpy(&bits, &fused, 4);
      nonfinite |= static_cast<uint32_t>((bits & kF32Exp) == kF32Exp);
      out[i] = FloatToBf16(fused);
    }
    if (nonfinite) bad.store(true, std::memory_order_relaxed);
    total.fetch_add(count, std::memory_order_relaxed);
  });
  if (bad.load()) return false;
  *kept = total.load();
  return true;
}

}  // namespace tailor
