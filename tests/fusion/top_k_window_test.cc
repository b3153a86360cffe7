// TopKWindow (one counting pass bracketing the k-th largest key from a
// sample) followed, when it cannot tell, by StreamedTopK's radix passes:
// the masks must be those of the whole-array TopKMask in every case, and
// Resolve must really decline when the sample misjudged the window.

#include "fusion/top_k_window.h"

#include <gtest/gtest.h>

#include <cmath>
#include <functional>
#include <memory>
#include <random>
#include <vector>

#include "absl/strings/str_cat.h"
#include "fusion/streamed_top_k.h"
#include "fusion/top_k.h"

namespace tailor {
namespace {

using Key = StreamedTopK<float>::Key;

Key KeyOf(float v) { return StreamedTopK<float>::MagnitudeKey(v); }

float ValueOf(Key key) {
  key &= 0x7fffffffu;
  float v;
  std::memcpy(&v, &key, sizeof(v));
  return v;
}

// The streamer's use: a window from `sample`, one pass over `v` (>= 0) in
// chunks of `chunk`, Resolve with `g` (the ranked image of each value), else
// the radix passes over the images; the mask of the top k images.
struct Outcome {
  std::vector<bool> mask;
  bool enabled = false;
  bool resolved = false;
};

Outcome Select(const std::vector<float>& v, int64_t k, int64_t chunk,
               std::vector<Key> sample, int64_t budget,
               const std::function<float(float)>& g) {
  const int64_t n = static_cast<int64_t>(v.size());
  std::vector<Key> keys(v.size()), images(v.size());
  for (size_t i = 0; i < v.size(); ++i) {
    keys[i] = KeyOf(v[i]);
    images[i] = KeyOf(g(v[i]));
  }
  StreamedTopK<float> top(n, k, /*abs=*/false);
  TopKWindow<float> window(std::move(sample), n, top.k(), budget);
  Outcome out;
  out.enabled = window.enabled();
  for (int64_t off = 0; off < n; off += chunk) {
    window.CountKeys(keys.data() + off, std::min(chunk, n - off));
  }
  Key threshold;
  int64_t ties;
  if (top.NeedsPass() &&
      window.Resolve([&](Key key) { return KeyOf(g(ValueOf(key))); },
                     &threshold, &ties)) {
    out.resolved = true;
    top.SetThreshold(threshold, ties);
  }
  while (top.NeedsPass()) {
    for (int64_t off = 0; off < n; off += chunk) {
      top.CountKeys(images.data() + off, std::min(chunk, n - off));
    }
    top.EndPass();
  }
  std::unique_ptr<bool[]> mask(new bool[n]);
  int64_t kept = 0;
  for (int64_t off = 0; off < n; off += chunk) {
    kept += top.SelectKeys(images.data() + off, std::min(chunk, n - off),
                           &mask[off]);
  }
  EXPECT_EQ(kept, top.k());
  out.mask.assign(mask.get(), mask.get() + n);
  return out;
}

std::vector<bool> Whole(const std::vector<float>& v, int64_t k,
                        const std::function<float(float)>& g) {
  std::vector<float> images(v.size());
  for (size_t i = 0; i < v.size(); ++i) images[i] = g(v[i]);
  std::unique_ptr<bool[]> mask(new bool[v.size()]);
  TopKMask<float>(images.data(), static_cast<int64_t>(v.size()), k, mask.get());
  return std::vector<bool>(mask.get(), mask.get() + v.size());
}

// Every `stride`-th key of v.
std::vector<Key> Strided(const std::vector<float>& v, size_t stride) {
  std::vector<Key> s;
  for (size_t i = 0; i < v.size(); i += stride) s.push_back(KeyOf(v[i]));
  return s;
}

float Identity(float x) { return x; }

std::vector<float> Normal(int n, uint32_t seed, double scale = 1.0) {
  std::mt19937 rng(seed);
  std::normal_distribution<double> normal;
  std::vector<float> v(n);
  for (auto& x : v) x = static_cast<float>(std::fabs(scale * normal(rng)));
  return v;
}

TEST(TopKWindowTest, AGoodSampleSettlesTheSelectionInOnePass) {
  const std::vector<float> v = Normal(200000, 1);
  for (int64_t k :
       {int64_t{1}, int64_t{20000}, int64_t{100000}, int64_t{199999}}) {
    SCOPED_TRACE(absl::StrCat("k=", k));
    Outcome o = Select(v, k, 4096, Strided(v, 3), 200000 / 32, Identity);
    EXPECT_TRUE(o.enabled);
    EXPECT_TRUE(o.resolved);
    EXPECT_EQ(o.mask, Whole(v, k, Identity));
  }
}

// Values repeated across the boundary (multiples of 1/64): the window
// holds the ties, and the lower-index rule picks among them.
TEST(TopKWindowTest, TiesAtTheBoundaryKeepTheLowestIndices) {
  std::vector<float> v = Normal(100000, 2);
  for (auto& x : v) x = std::round(x * 64) / 64;
  for (int64_t k : {int64_t{10000}, int64_t{33333}, int64_t{50001}}) {
    SCOPED_TRACE(absl::StrCat("k=", k));
    Outcome o = Select(v, k, 777, Strided(v, 2), 100000 / 8, Identity);
    EXPECT_TRUE(o.resolved);
    EXPECT_EQ(o.mask, Whole(v, k, Identity));
  }
}

// A sample from another distribution puts the window far from the k-th
// key: Resolve declines and the radix passes give the exact mask.
TEST(TopKWindowTest, AMisjudgedWindowFallsBackToTheRadixPasses) {
  const std::vector<float> v = Normal(100000, 3);
  for (double scale : {1e-3, 1e3}) {
    SCOPED_TRACE(absl::StrCat("sample scale ", scale));
    const std::vector<float> other = Normal(20000, 4, scale);
    Outcome o =
        Select(v, 10000, 1000, Strided(other, 1), 100000 / 32, Identity);
    EXPECT_TRUE(o.enabled);
    EXPECT_FALSE(o.resolved);
    EXPECT_EQ(o.mask, Whole(v, 10000, Identity));
  }
}

// More keys inside the window than the budget: the pass stops collecting
// and Resolve declines.
TEST(TopKWindowTest, AnOverflowingWindowFallsBackToTheRadixPasses) {
  std::vector<float> v = Normal(50000, 5);
  // The sample sees distinct values; the data repeats the sample's median
  // (inside any window around it) 40000 times.
  const std::vector<Key> sample = Strided(v, 1);
  std::vector<float> sorted = v;
  std::nth_element(sorted.begin(), sorted.begin() + 25000, sorted.end());
  for (int i = 0; i < 40000; ++i) v[i] = sorted[25000];
  Outcome o = Select(v, 25000, 1000, sample, 50000 / 32, Identity);
  EXPECT_TRUE(o.enabled);
  EXPECT_FALSE(o.resolved);
  EXPECT_EQ(o.mask, Whole(v, 25000, Identity));
}

// A sample predicting more keys inside the window than the budget (a value
// repeated across the boundary) disables the window up front.
TEST(TopKWindowTest, APredictedOverflowDisablesTheWindow) {
  std::vector<float> v = Normal(50000, 6);
  for (int i = 0; i < 45000; ++i) v[i] = 0;  // k = 10000 falls in them
  Outcome o = Select(v, 10000, 1000, Strided(v, 1), 50000 / 32, Identity);
  EXPECT_FALSE(o.enabled);
  EXPECT_EQ(o.mask, Whole(v, 10000, Identity));
}

// Ranking a monotone image (magnitude's min-max score): the k-th largest
// image is the image of the k-th largest key, and the ties are the keys
// mapping to it. A coarse image merges neighbours (many ties); a constant
// one maps keys outside the window to the threshold, so Resolve declines.
TEST(TopKWindowTest, MonotoneImagesRankLikeTheWholeArray) {
  const std::vector<float> v = Normal(100000, 7);
  const float lo = *std::min_element(v.begin(), v.end());
  const float range = *std::max_element(v.begin(), v.end()) - lo;
  const std::function<float(float)> score = [&](float x) {
    return (std::fabs(x) - lo) / range;
  };
  const std::function<float(float)> coarse = [](float x) {
    return std::floor(x * 256) / 256;
  };
  const std::function<float(float)> constant = [](float) { return 0.5f; };
  for (int64_t k : {int64_t{1000}, int64_t{10000}, int64_t{60000}}) {
    SCOPED_TRACE(absl::StrCat("k=", k));
    // (A 25000-key sample: a window of ~3% of n at k = 60000.)
    Outcome s = Select(v, k, 1024, Strided(v, 4), 100000 / 16, score);
    EXPECT_TRUE(s.resolved);
    EXPECT_EQ(s.mask, Whole(v, k, score));
    Outcome c = Select(v, k, 1024, Strided(v, 4), 100000 / 16, coarse);
    EXPECT_EQ(c.mask, Whole(v, k, coarse));
    Outcome z = Select(v, k, 1024, Strided(v, 4), 100000 / 16, constant);
    EXPECT_FALSE(z.resolved);
    EXPECT_EQ(z.mask, Whole(v, k, constant));
  }
}

TEST(TopKWindowTest, SampleBlocksTileSmallTensorsAndSpreadOverLargeOnes) {
  auto small = TopKWindow<float>::SampleBlocks(1000, 37);
  int64_t covered = 0;
  for (const auto& [off, m] : small) {
    EXPECT_EQ(off, covered);
    covered += m;
  }
  EXPECT_EQ(covered, 1000);
  auto large = TopKWindow<float>::SampleBlocks(int64_t{1} << 26, 1 << 18);
  ASSERT_FALSE(large.empty());
  EXPECT_EQ(large.front().first, 0);
  EXPECT_EQ(large.back().first + large.back().second, int64_t{1} << 26);
  int64_t keys = 0;
  for (const auto& [off, m] : large) keys += m;
  EXPECT_EQ(keys, TopKWindow<float>::kSampleKeys);
}

}  // namespace
}  // namespace tailor
