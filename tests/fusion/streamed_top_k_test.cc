// StreamedTopK (passes over chunks) against the whole-array radix select
// TopKMask / TopKAbsMask: the masks must be identical bit for bit.

#include "fusion/streamed_top_k.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <memory>
#include <random>
#include <vector>

#include "absl/strings/str_cat.h"
#include "fusion/top_k.h"

namespace tailor {
namespace {

// Runs the streamed selection over `v` in chunks of `chunk`, counting the
// passes; each pass feeds the chunks last to first (counting must not
// depend on the order), the output pass first to last.
// With `keys`, through CountKeys/SelectKeys on KeyOf images instead.
template <typename T>
std::vector<bool> Streamed(const std::vector<T>& v, int64_t k, bool abs,
                           int64_t chunk, int* passes, bool keys = false) {
  const int64_t n = static_cast<int64_t>(v.size());
  StreamedTopK<T> top(n, k, abs);
  std::vector<typename StreamedTopK<T>::Key> key(v.size());
  for (size_t i = 0; i < v.size(); ++i) key[i] = top.KeyOf(v[i]);
  *passes = 0;
  while (top.NeedsPass()) {
    ++*passes;
    for (int64_t off = ((n - 1) / chunk) * chunk; off >= 0; off -= chunk) {
      const int64_t m = std::min(chunk, n - off);
      if (keys) {
        top.CountKeys(key.data() + off, m);
      } else {
        top.Count(v.data() + off, m);
      }
    }
    top.EndPass();
  }
  std::unique_ptr<bool[]> mask(new bool[n > 0 ? n : 1]);
  int64_t kept = 0;
  for (int64_t off = 0; off < n; off += chunk) {
    const int64_t m = std::min(chunk, n - off);
    kept += keys ? top.SelectKeys(key.data() + off, m, &mask[off])
                 : top.Select(v.data() + off, m, &mask[off]);
  }
  EXPECT_EQ(kept, top.k());
  return std::vector<bool>(mask.get(), mask.get() + n);
}

template <typename T>
std::vector<bool> Whole(const std::vector<T>& v, int64_t k, bool abs) {
  const int64_t n = static_cast<int64_t>(v.size());
  std::unique_ptr<bool[]> mask(new bool[n > 0 ? n : 1]);
  if (abs) {
    TopKAbsMask<T>(v.data(), n, k, mask.get());
  } else {
    TopKMask<T>(v.data(), n, k, mask.get());
  }
  return std::vector<bool>(mask.get(), mask.get() + n);
}

// Adversarial inputs: ties, zeros of both signs, denormals, all equal,
// a single huge outlier, NaN.
template <typename T>
std::vector<std::pair<std::string, std::vector<T>>> Inputs() {
  std::vector<std::pair<std::string, std::vector<T>>> in;
  std::mt19937 rng(7);
  const int n = 1000;
  std::vector<T> v(n);
  std::normal_distribution<double> normal;
  for (auto& x : v) x = static_cast<T>(normal(rng));
  in.emplace_back("normal", v);
  std::uniform_int_distribution<int> few(-3, 3);
  for (auto& x : v) x = static_cast<T>(few(rng));  // many ties, zeros
  in.emplace_back("ties", v);
  for (int i = 0; i < n; ++i) v[i] = (i % 3 == 0) ? T(-0.0) : T(0.0);
  v[500] = T(1);
  in.emplace_back("signed-zeros", v);
  const T denorm = std::numeric_limits<T>::denorm_min();
  for (int i = 0; i < n; ++i) {
    v[i] = static_cast<T>((i % 5) - 2) * denorm * static_cast<T>(1 + i % 2);
  }
  in.emplace_back("denormals", v);
  std::fill(v.begin(), v.end(), T(0.25));
  in.emplace_back("all-equal", v);
  std::fill(v.begin(), v.end(), T(-0.25));
  v[999] = T(1e30);
  in.emplace_back("outlier", v);
  for (auto& x : v) x = static_cast<T>(normal(rng));
  v[3] = std::numeric_limits<T>::quiet_NaN();
  v[700] = -std::numeric_limits<T>::quiet_NaN();
  v[10] = std::numeric_limits<T>::infinity();
  v[11] = -std::numeric_limits<T>::infinity();
  in.emplace_back("non-finite", v);
  // Values that share their high 16 key bits (one boundary bucket, broken
  // only by the low bits) and values differing in the last bit only.
  for (int i = 0; i < n; ++i) {
    v[i] = std::nextafter(T(1), T(2));
    for (int s = 0; s < i % 7; ++s) v[i] = std::nextafter(v[i], T(2));
    if (i % 2) v[i] = -v[i];
  }
  in.emplace_back("one-bucket", v);
  in.emplace_back("empty", std::vector<T>());
  in.emplace_back("single", std::vector<T>{T(-2)});
  return in;
}

template <typename T>
void CheckAll() {
  for (const auto& [label, v] : Inputs<T>()) {
    const int64_t n = static_cast<int64_t>(v.size());
    for (bool abs : {true, false}) {
      for (int64_t k : {int64_t{-1}, int64_t{0}, int64_t{1}, n / 10, n / 3,
                        n / 2, n - 1, n, n + 5}) {
        for (int64_t chunk :
             {int64_t{1}, int64_t{7}, std::max<int64_t>(n, 1), n + 3}) {
          SCOPED_TRACE(absl::StrCat(label, " abs=", abs, " k=", k,
                                    " chunk=", chunk, " bytes=", sizeof(T)));
          int passes = 0;
          const std::vector<bool> whole = Whole(v, k, abs);
          EXPECT_EQ(Streamed(v, k, abs, chunk, &passes), whole);
          EXPECT_LE(passes, static_cast<int>(sizeof(T) / 2));
          EXPECT_EQ(Streamed(v, k, abs, chunk, &passes, /*keys=*/true), whole);
        }
      }
    }
  }
}

TEST(StreamedTopKTest, FloatMasksMatchTheWholeArraySelection) {
  CheckAll<float>();
}

TEST(StreamedTopKTest, DoubleMasksMatchTheWholeArraySelection) {
  CheckAll<double>();
}

// The selection must really depend on the low bits: two values in the same
// high-16-bit bucket, k = 1, the larger one later in index order.
TEST(StreamedTopKTest, LowBitsDecideWithinTheBoundaryBucket) {
  const float a = 1.0f, b = std::nextafter(1.0f, 2.0f);
  std::vector<float> v = {a, a, b, a};
  int passes = 0;
  EXPECT_EQ(Streamed(v, 1, true, 3, &passes),
            (std::vector<bool>{false, false, true, false}));
  EXPECT_EQ(passes, 2);
  // Ties to the lower index: k = 2 takes b and the first a.
  EXPECT_EQ(Streamed(v, 2, true, 3, &passes),
            (std::vector<bool>{true, false, true, false}));
}

// The boundary bucket taken whole stops after one pass.
TEST(StreamedTopKTest, WholeBoundaryBucketStopsEarly) {
  std::vector<float> v = {1.0f, 4.0f, 2.0f, 4.0f};
  int passes = 0;
  EXPECT_EQ(Streamed(v, 2, false, 2, &passes),
            (std::vector<bool>{false, true, false, true}));
  EXPECT_EQ(passes, 1);
}

// MagnitudeKey is KeyOf for an instance ranking |v| (any non-NaN v) and
// for v >= +0 ranked as is.
TEST(StreamedTopKTest, MagnitudeKeyIsKeyOfForAbsAndNonNegativeValues) {
  StreamedTopK<float> abs(10, 3, true), plain(10, 3, false);
  StreamedTopK<double> abs64(10, 3, true);
  for (double x : {0.0, -0.0, 1e-45, -1e-45, 1.5, -1.5, 3e38, -3e38, 1e300,
                   -1e-310, std::numeric_limits<double>::infinity(),
                   -std::numeric_limits<double>::infinity()}) {
    const float f = static_cast<float>(x);
    EXPECT_EQ(StreamedTopK<float>::MagnitudeKey(f), abs.KeyOf(f)) << x;
    EXPECT_EQ(StreamedTopK<double>::MagnitudeKey(x), abs64.KeyOf(x)) << x;
    if (!std::signbit(f)) {
      EXPECT_EQ(StreamedTopK<float>::MagnitudeKey(f), plain.KeyOf(f)) << x;
    }
  }
}

// SetThresholdRange (streamed magnitude's selection moved from the
// min-max scores' keys to |D|'s): keys above the threshold are kept, plus
// the first `ties` keys of the tie range in index order; SelectKeys over
// chunks and KeepKey one by one agree, and TakeTies consumes ties as a
// caller's own selection of a run does.
TEST(StreamedTopKTest, ThresholdRangeKeepsTheFirstTiesOfTheRangeInOrder) {
  using Key = StreamedTopK<float>::Key;
  std::mt19937 gen(7);
  std::uniform_int_distribution<Key> pick(100, 140);
  std::vector<Key> keys(1000);
  for (Key& k : keys) k = pick(gen);
  for (int64_t ties : {int64_t{0}, int64_t{1}, int64_t{37}, int64_t{200},
                       std::numeric_limits<int64_t>::max()}) {
    SCOPED_TRACE(ties);
    // Expected: > 130 kept; [120, 130]: the first `ties` of them.
    std::vector<bool> expected(keys.size());
    int64_t left = ties;
    for (size_t i = 0; i < keys.size(); ++i) {
      const bool tie = keys[i] >= 120 && keys[i] <= 130;
      expected[i] = keys[i] > 130 || (tie && left > 0);
      if (tie && left > 0) --left;
    }
    StreamedTopK<float> chunked(1000, 1, true), one(1000, 1, true);
    chunked.SetThresholdRange(120, 130, ties);
    one.SetThresholdRange(120, 130, ties);
    std::unique_ptr<bool[]> mask(new bool[keys.size()]);
    for (size_t off = 0; off < keys.size(); off += 77) {
      const int64_t m = std::min<int64_t>(77, keys.size() - off);
      chunked.SelectKeys(keys.data() + off, m, mask.get() + off);
    }
    for (size_t i = 0; i < keys.size(); ++i) {
      EXPECT_EQ(mask[i], expected[i]) << i;
      EXPECT_EQ(one.KeepKey(keys[i]), expected[i]) << i;
    }
  }
  StreamedTopK<float> top(1000, 1, true);
  top.SetThresholdRange(120, 130, 10);
  top.TakeTies(4);
  EXPECT_EQ(top.ties_left(), 6);
  EXPECT_EQ(top.tie_lo(), 120u);
  EXPECT_EQ(top.threshold(), 130u);
}

}  // namespace
}  // namespace tailor
