#include "fusion/streamed_top_k.h"

#include <algorithm>
#include <limits>

namespace tailor {

template <typename T>
StreamedTopK<T>::StreamedTopK(int64_t n, int64_t k, bool abs)
    : k_(std::clamp<int64_t>(k, 0, std::max<int64_t>(n, 0))), abs_(abs) {
  remaining_ = k_;
  if (k_ == 0) {
    // Nothing is above the largest key, and no tie is taken.
    threshold_ = tie_lo_ = ~Key{0};
    ties_left_ = 0;
    shift_ = -1;
  } else if (k_ == n) {
    TakeAtLeast(0);
    shift_ = -1;
  } else {
    hist_.assign(size_t{1} << kDigitBits, 0);
  }
}

template <typename T>
void StreamedTopK<T>::TakeAtLeast(Key threshold) {
  if (threshold == 0) {
    threshold_ = tie_lo_ = 0;
    ties_left_ = std::numeric_limits<int64_t>::max();
  } else {
    threshold_ = tie_lo_ = threshold - 1;
    ties_left_ = 0;
  }
}

template <typename T>
void StreamedTopK<T>::EndPass() {
  // The digit of the k-th largest key: walk the buckets from the top until
  // `remaining_` falls inside one (0 < remaining_ <= the keys counted).
  Key d = kDigitMask;
  for (;; --d) {
    if (hist_[d] >= remaining_) break;
    remaining_ -= hist_[d];
  }
  const Key digit = d << shift_;
  if (hist_[d] == remaining_) {
    // The boundary bucket is taken whole: every key from its lowest
    // possible value up.
    TakeAtLeast(prefix_ | digit);
    shift_ = -1;
  } else {
    prefix_ |= digit;
    known_ |= kDigitMask << shift_;
    shift_ -= kDigitBits;
    if (shift_ < 0) {
      // prefix_ is the k-th largest key; remaining_ of the keys equal to it
      // are kept, the lowest-indexed ones.
      threshold_ = tie_lo_ = prefix_;
      ties_left_ = remaining_;
    }
  }
  if (shift_ < 0) {
    hist_.clear();
    hist_.shrink_to_fit();
  } else {
    std::fill(hist_.begin(), hist_.end(), 0);
  }
}

template <typename T>
void StreamedTopK<T>::SetThreshold(Key threshold, int64_t ties) {
  SetThresholdRange(threshold, threshold, ties);
}

template <typename T>
void StreamedTopK<T>::SetThresholdRange(Key tie_lo, Key threshold,
                                        int64_t ties) {
  threshold_ = threshold;
  tie_lo_ = tie_lo;
  ties_left_ = ties;
  shift_ = -1;
  hist_.clear();
  hist_.shrink_to_fit();
}

template <typename T>
void StreamedTopK<T>::CountKeys(const Key* keys, int64_t m) {
  if (!NeedsPass()) return;
  const int shift = shift_;
  int64_t* hist = hist_.data();
  if (known_ == 0) {
    for (int64_t i = 0; i < m; ++i) ++hist[(keys[i] >> shift) & kDigitMask];
    return;
  }
  const Key known = known_, prefix = prefix_;
  for (int64_t i = 0; i < m; ++i) {
    if ((keys[i] & known) == prefix) ++hist[(keys[i] >> shift) & kDigitMask];
  }
}

template <typename T>
int64_t StreamedTopK<T>::SelectKeys(const Key* keys, int64_t m, bool* mask) {
  const Key t = threshold_, lo = tie_lo_, width = t - lo;
  // The tie keys ([lo, t]) in this chunk: all of them are kept when no
  // more than ties_left_, none when no tie is left; only a chunk where the
  // ties run out (one per selection) takes them one by one.
  int64_t equal = 0;
  if (ties_left_ > 0) equal = CountInRange(keys, m, lo, t);
  const bool all_ties = equal > 0 && equal <= ties_left_;
  if (all_ties && lo == 0) {  // every key is >= 0
    std::fill(mask, mask + m, true);
    ties_left_ -= equal;
    return m;
  }
  const int64_t kept = all_ties ? WriteMask(keys, m, lo - 1, mask)  // >= lo
                                : WriteMask(keys, m, t, mask);
  if (all_ties) {
    ties_left_ -= equal;
    return kept;
  }
  if (equal == 0) return kept;
  int64_t with_ties = kept;
  // Tie keys, in index order while ties are left.
  for (int64_t i = 0; i < m && ties_left_ > 0; ++i) {
    if (static_cast<Key>(keys[i] - lo) <= width) {
      mask[i] = true;
      ++with_ties;
      --ties_left_;
    }
  }
  return with_ties;
}

template <typename T>
int64_t StreamedTopK<T>::CountInRange(const Key* keys, int64_t m, Key lo,
                                      Key t) {
  const Key width = t - lo;
  int64_t equal = 0;
  for (int64_t i0 = 0; i0 < m; i0 += kCountBlock) {
    const int64_t end = std::min(m, i0 + kCountBlock);
    uint32_t block = 0;
    for (int64_t i = i0; i < end; ++i) {
      block += static_cast<Key>(keys[i] - lo) <= width;
    }
    equal += block;
  }
  return equal;
}

template <typename T>
int64_t StreamedTopK<T>::WriteMask(const Key* keys, int64_t m, Key t,
                                   bool* mask) {
  // The mask's bytes written as integers (0 or 1: a bool store does not
  // vectorise), counted 32 bits wide per block.
  auto* bytes = reinterpret_cast<uint8_t*>(mask);
  int64_t kept = 0;
  for (int64_t i0 = 0; i0 < m; i0 += kCountBlock) {
    const int64_t end = std::min(m, i0 + kCountBlock);
    uint32_t block = 0;
    for (int64_t i = i0; i < end; ++i) {
      const uint8_t above = keys[i] > t;
      bytes[i] = above;
      block += above;
    }
    kept += block;
  }
  return kept;
}

template class StreamedTopK<float>;
template class StreamedTopK<double>;

}  // namespace tailor
