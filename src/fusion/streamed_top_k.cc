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
    threshold_ = ~Key{0};
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
    threshold_ = 0;
    ties_left_ = std::numeric_limits<int64_t>::max();
  } else {
    threshold_ = threshold - 1;
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
      threshold_ = prefix_;
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
  const Key t = threshold_;
  uint32_t ties = 0;
  int64_t kept = 0;
  for (int64_t i = 0; i < m; ++i) {
    mask[i] = keys[i] > t;
    ties |= keys[i] == t;
    kept += mask[i];
  }
  if (ties == 0 || ties_left_ == 0) return kept;
  // Keys equal to the threshold, in index order while ties are left.
  for (int64_t i = 0; i < m && ties_left_ > 0; ++i) {
    if (keys[i] == t) {
      mask[i] = true;
      ++kept;
      --ties_left_;
    }
  }
  return kept;
}

template class StreamedTopK<float>;
template class StreamedTopK<double>;

}  // namespace tailor
