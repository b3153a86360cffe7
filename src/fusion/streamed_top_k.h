#ifndef TAILOR_FUSION_STREAMED_TOP_K_H_
#define TAILOR_FUSION_STREAMED_TOP_K_H_

#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <vector>

namespace tailor {

// Exact top-k selection over values that are fed in passes, chunk after
// chunk, instead of held whole: the streamed form of TopKMask / TopKAbsMask
// (top_k.h), with the same contract and so bit-identical masks. Every entry
// above the k-th largest value is kept, plus, among the entries equal to it,
// the lowest-indexed ones until exactly k are kept; NaN ranks above
// everything (equal to every NaN), -0 equals +0. Memory is one histogram
// (2^16 counters), not the values.
//
// The k-th largest value is found by a radix select over an order-preserving
// integer image of the values, 16 bits per counting pass, most significant
// first: two passes for float, four for double, fewer when the boundary
// bucket turns out to be taken whole (then no equal-value bookkeeping is
// needed). Usage:
//
//   StreamedTopK<float> top(n, k, /*abs=*/true);
//   while (top.NeedsPass()) {
//     for (each chunk, any order) top.Count(chunk, m);
//     top.EndPass();
//   }
//   for (each chunk, in index order) top.Select(chunk, m, mask);
//
// Count may also be called element by element (Observe) and Select (Keep),
// for callers that compute the values on the fly. Not thread-safe.
template <typename T>
class StreamedTopK {
  static_assert(std::is_same_v<T, float> || std::is_same_v<T, double>);

 public:
  using Key = std::conditional_t<sizeof(T) == 4, uint32_t, uint64_t>;

  // n values in all; keeps min(max(k, 0), n) of them, ranking |value| when
  // `abs`.
  StreamedTopK(int64_t n, int64_t k, bool abs);

  // Whether another counting pass must run before Select/Keep.
  bool NeedsPass() const { return shift_ >= 0; }

  // Counts values of the current pass (a no-op once !NeedsPass()). Each pass
  // must see all n values exactly once, in any order.
  void Count(const T* values, int64_t m) {
    if (!NeedsPass()) return;
    for (int64_t i = 0; i < m; ++i) Observe(values[i]);
  }
  inline void Observe(T v) { ObserveKey(KeyOf(v)); }
  // Observe and Keep on a precomputed KeyOf (or MagnitudeKey) image.
  inline void ObserveKey(Key key) {
    if ((key & known_) == prefix_) ++hist_[(key >> shift_) & kDigitMask];
  }
  // Count and Select over precomputed keys (KeyOf or MagnitudeKey images),
  // in loops the compiler can vectorise.
  void CountKeys(const Key* keys, int64_t m);
  int64_t SelectKeys(const Key* keys, int64_t m, bool* mask);

  // Ends a counting pass. REQUIRES: NeedsPass().
  void EndPass();

  // Ends the counting with the k-th largest key found by other means
  // (TopKWindow): keys above `threshold` are kept, plus the first `ties`
  // keys equal to it in index order. REQUIRES: the arguments describe this
  // instance's k keys (ties >= 1).
  void SetThreshold(Key threshold, int64_t ties);
  // The same with a range of tie keys: keys above `threshold` are kept,
  // plus the first `ties` keys in [tie_lo, threshold] in index order (the
  // keys a monotone map sends to one value: see streamed_merge.cc).
  // REQUIRES: tie_lo <= threshold.
  void SetThresholdRange(Key tie_lo, Key threshold, int64_t ties);

  // The selection once counted (!NeedsPass()): keys above threshold() are
  // kept, and the first ties_left() keys in [tie_lo(), threshold()] still
  // to come (index order).
  Key threshold() const { return threshold_; }
  // Takes `count` ties at once: a caller that selected a run of keys
  // holding `count` tie keys by itself, all of them kept. REQUIRES: count
  // <= ties_left().
  void TakeTies(int64_t count) { ties_left_ -= count; }
  Key tie_lo() const { return tie_lo_; }
  int64_t ties_left() const { return ties_left_; }

  // The output pass, after the last counting pass: mask[i] for the next m
  // values in index order (first to last over [0, n)); returns how many it
  // keeps. REQUIRES: !NeedsPass().
  int64_t Select(const T* values, int64_t m, bool* mask) {
    int64_t kept = 0;
    for (int64_t i = 0; i < m; ++i) {
      mask[i] = Keep(values[i]);
      kept += mask[i];
    }
    return kept;
  }
  // Whether the next value in index order is kept.
  inline bool Keep(T v) { return KeepKey(KeyOf(v)); }
  inline bool KeepKey(Key key) {
    if (key > threshold_) return true;
    if (key >= tie_lo_ && ties_left_ > 0) {
      --ties_left_;
      return true;
    }
    return false;
  }

  // How many values are kept in all: min(max(k, 0), n).
  int64_t k() const { return k_; }

  // KeyOf(v) for an instance ranking |v| with v not NaN, or for v >= +0:
  // the bits with the sign bit set (two integer operations).
  static inline Key MagnitudeKey(T v) {
    Key bits;
    std::memcpy(&bits, &v, sizeof(bits));
    return bits | kSign;
  }

  // The order-preserving key of v (|v| when abs): NaN is the largest key,
  // -0 and +0 the same.
  inline Key KeyOf(T v) const {
    if (abs_) v = std::fabs(v);
    if (std::isnan(v)) return ~Key{0};
    v = v + T(0);  // -0 + 0 = +0 (not folded: no -ffast-math)
    Key bits;
    std::memcpy(&bits, &v, sizeof(bits));
    return (bits & kSign) ? ~bits : (bits | kSign);
  }

 private:
  static constexpr int kDigitBits = 16;
  static constexpr Key kDigitMask = (Key{1} << kDigitBits) - 1;
  static constexpr Key kSign = Key{1} << (8 * sizeof(Key) - 1);

  // Sets the selection to "every key >= threshold_" (ties_left_ = all).
  void TakeAtLeast(Key threshold);

  // SelectKeys' vectorised loops: how many keys lie in [lo, t]; mask =
  // key > t (returns how many).
  static constexpr int64_t kCountBlock = int64_t{1} << 20;
  static int64_t CountInRange(const Key* keys, int64_t m, Key lo, Key t);
  static int64_t WriteMask(const Key* keys, int64_t m, Key t, bool* mask);

  int64_t k_;
  bool abs_;
  // Counting state: the k-th largest key's bits under known_ are prefix_;
  // remaining_ is its rank among the keys sharing them; the current digit
  // is bits [shift_, shift_ + 16), shift_ < 0 once the key is resolved.
  Key prefix_ = 0, known_ = 0;
  int64_t remaining_ = 0;
  int shift_ = 8 * sizeof(Key) - kDigitBits;
  std::vector<int64_t> hist_;
  // Selection state: keys above threshold_ are kept, and the first
  // ties_left_ keys in [tie_lo_, threshold_] (in index order; tie_lo_ is
  // threshold_ but after SetThresholdRange).
  Key threshold_ = 0;
  Key tie_lo_ = 0;
  int64_t ties_left_ = 0;
};

extern template class StreamedTopK<float>;
extern template class StreamedTopK<double>;

}  // namespace tailor

#endif  // TAILOR_FUSION_STREAMED_TOP_K_H_
