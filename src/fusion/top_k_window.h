#ifndef TAILOR_FUSION_TOP_K_WINDOW_H_
#define TAILOR_FUSION_TOP_K_WINDOW_H_

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <functional>
#include <memory>
#include <utility>
#include <vector>

#include "fusion/streamed_top_k.h"

namespace tailor {

// A one-pass shortcut for StreamedTopK's radix select over non-negative
// keys (StreamedTopK<T>::MagnitudeKey images of finite values): a sample of
// the keys drawn across the tensor brackets the k-th largest key in a
// window [lo, hi]; one counting pass then counts the keys above hi and
// keeps those inside the window (a few percent of the tensor, bounded by
// `max_candidates`), and Resolve finds the k-th largest key among them
// exactly. The selection may rank a monotone image f(key) instead of the
// keys (magnitude's min-max score of |D|, whose range is known only after
// the same pass): the k-th largest f is f of the k-th largest key, and the
// keys f maps to it must all lie inside the window.
//
// When the sample misjudged the window (the k-th key lies outside it, the
// window overflowed `max_candidates`, or f's boundary is not inside it),
// Resolve says so and the caller runs StreamedTopK's passes instead: the
// result is exact either way. Not thread-safe.
template <typename T>
class TopKWindow {
 public:
  using Key = typename StreamedTopK<T>::Key;

  // Keys per sample (spread over the tensor in blocks of kSampleBlock).
  static constexpr int64_t kSampleKeys = 65536;
  static constexpr int64_t kSampleBlock = 128;

  // Where the sample is read in a tensor of n elements read in chunks of
  // `chunk`: blocks of min(kSampleBlock, chunk) elements ({offset, length}),
  // tiling the tensor when it holds kSampleKeys or fewer, else spread
  // evenly from its first element to its last.
  static std::vector<std::pair<int64_t, int64_t>> SampleBlocks(int64_t n,
                                                               int64_t chunk);

  // A disabled window: CountKeys is a no-op and Resolve fails.
  TopKWindow() = default;

  // The window for the k-th largest of n keys from `sample` (keys drawn
  // uniformly across them): the sample ranks around k/n, with a margin of
  // 4.5 standard deviations of the sample quantile. Disabled when k is 0 or
  // n (nothing to search) or when the sample predicts more than
  // 3/4 of max_candidates keys inside the window (say, a value repeated across
  // the boundary: the radix passes handle those without holding keys).
  TopKWindow(std::vector<Key> sample, int64_t n, int64_t k,
             int64_t max_candidates);

  bool enabled() const { return enabled_; }

  // The counting pass: every one of the n keys exactly once, in any order.
  void CountKeys(const Key* keys, int64_t m) {
    if (!enabled_) return;
    const Key lo = lo_, hi = hi_, width = hi_ - lo_;
    int64_t above = 0;
    for (int64_t i = 0; i < m; ++i) above += keys[i] > hi;
    above_ += above;
    // key in [lo, hi] as one unsigned comparison; written always, kept
    // when inside (branch-free), while a whole block fits the budget.
    Key* out = candidates_.get();
    int64_t count = count_;
    int64_t i = 0;
    for (; i < m && !overflow_;) {
      const int64_t block = std::min<int64_t>(kBlock, m - i);
      if (count + block > max_candidates_) {
        for (int64_t end = i + block; i < end; ++i) {
          if (static_cast<Key>(keys[i] - lo) > width) continue;
          if (count == max_candidates_) {
            overflow_ = true;
            break;
          }
          out[count++] = keys[i];
        }
        continue;
      }
      // Groups of 16 with no key inside (most) are skipped after one
      // vectorised test.
      const int64_t end = i + block;
      for (int64_t at = i; at < end; at += kGroup) {
        const Key* group = keys + at;
        const int64_t g = std::min<int64_t>(kGroup, end - at);
        uint32_t any = 0;
        for (int64_t j = 0; j < g; ++j) {
          any |= static_cast<Key>(group[j] - lo) <= width;
        }
        if (any == 0) continue;
        for (int64_t j = 0; j < g; ++j) {
          out[count] = group[j];
          count += static_cast<Key>(group[j] - lo) <= width;
        }
      }
      i = end;
    }
    count_ = count;
  }

  // After the pass: the k-th largest f(key) as `threshold`, and `ties`, how
  // many of the keys whose f equals it the selection keeps (the
  // lowest-indexed ones): StreamedTopK::SetThreshold's arguments. f must be
  // monotone non-decreasing; identity ranks the keys themselves. False when
  // the window cannot tell (see above). Frees the candidates either way.
  bool Resolve(const std::function<Key(Key)>& f, Key* threshold, int64_t* ties);

  // The most bytes the window holds (its candidates), for the working
  // memory estimate.
  static int64_t MaxBytes(int64_t max_candidates) {
    return max_candidates * static_cast<int64_t>(sizeof(Key));
  }

  // The candidate budget for a tensor of n elements read in chunks of
  // `chunk`: n / 32 keys, at least a chunk's worth.
  static int64_t Budget(int64_t n, int64_t chunk) {
    return std::max<int64_t>(n / 32, std::min(n, chunk));
  }

 private:
  bool enabled_ = false;
  bool overflow_ = false;
  int64_t n_ = 0, k_ = 0;
  int64_t max_candidates_ = 0;
  Key lo_ = 0, hi_ = 0;                   // the window, inclusive
  int64_t above_ = 0;                     // keys > hi_ counted
  static constexpr int64_t kBlock = 256;  // a multiple of kGroup
  static constexpr int64_t kGroup = 16;
  // The keys in [lo_, hi_] (count_ of them, any order), room for
  // max_candidates_ allocated once (untouched until written).
  std::unique_ptr<Key[]> candidates_;
  int64_t count_ = 0;
};

extern template class TopKWindow<float>;
extern template class TopKWindow<double>;

}  // namespace tailor

#endif  // TAILOR_FUSION_TOP_K_WINDOW_H_
