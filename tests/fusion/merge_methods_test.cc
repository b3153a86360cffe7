// Merge methods against small cases computed by hand from DESIGN section 2.

#include "fusion/merge_methods.h"

#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <thread>

#include "absl/strings/match.h"

namespace tailor {
namespace {

at::Tensor T(std::vector<double> v) { return at::tensor(v, at::kDouble); }
at::Tensor M(std::vector<int> v) {
  std::vector<uint8_t> b(v.begin(), v.end());
  return at::tensor(b, at::kByte).to(at::kBool);
}

void ExpectTensor(const at::Tensor& got, std::vector<double> want,
                  double tol = 1e-12) {
  ASSERT_EQ(got.numel(), static_cast<int64_t>(want.size()));
  at::Tensor g = got.to(at::kDouble).reshape({-1});
  for (size_t i = 0; i < want.size(); ++i) {
    EXPECT_NEAR(g[i].item<double>(), want[i], tol) << "index " << i;
  }
}

class StitchTest : public ::testing::Test {
 protected:
  // t0 selects {0, 1}, t1 selects {1, 2}, t2 selects nothing; t1 carries a
  // stray value outside its mask, which must be ignored.
  std::vector<TaskDelta> tasks_ = {{M({1, 1, 0, 0}), T({2, 4, 0, 0})},
                                   {M({0, 1, 1, 0}), T({99, 6, 3, 0})},
                                   {M({0, 0, 0, 0}), T({0, 0, 0, 0})}};
};

TEST_F(StitchTest, MaskIsTheUnion) {
  for (Aggregation a :
       {Aggregation::kMeanSelected, Aggregation::kMeanAll, Aggregation::kSum}) {
    EXPECT_TRUE(Stitch(tasks_, a).mask.equal(M({1, 1, 1, 0})));
  }
}

TEST_F(StitchTest, MeanSelectedDividesBySelectingTasks) {
  ExpectTensor(Stitch(tasks_, Aggregation::kMeanSelected).delta, {2, 5, 3, 0});
}

TEST_F(StitchTest, MeanAllDividesByTaskCount) {
  ExpectTensor(Stitch(tasks_, Aggregation::kMeanAll).delta,
               {2.0 / 3, 10.0 / 3, 1, 0});
}

TEST_F(StitchTest, SumAddsSelectedDeltas) {
  ExpectTensor(Stitch(tasks_, Aggregation::kSum).delta, {2, 10, 3, 0});
}

TEST_F(StitchTest, DisjointMasksKeepEachTaskValue) {
  std::vector<TaskDelta> disjoint = {{M({1, 0}), T({1.5, 0})},
                                     {M({0, 1}), T({0, -2})}};
  ExpectTensor(Stitch(disjoint, Aggregation::kMeanSelected).delta, {1.5, -2});
  ExpectTensor(Stitch(disjoint, Aggregation::kMeanAll).delta, {0.75, -1});
}

TEST(TaskArithmeticTest, ScaledSum) {
  MergedDelta m = TaskArithmetic({T({1, -2, 0}), T({3, 2, 0})}, 0.5);
  ExpectTensor(m.delta, {2, 0, 0});
  EXPECT_TRUE(m.mask.equal(M({1, 0, 0})));
}

TEST(TiesTest, TrimElectDisjointMean) {
  // density 0.5 of 4 entries: k = 2 per task.
  //   D1 = [ 3, -1, 2, -5] -> trimmed [ 3, 0, 0, -5]
  //   D2 = [-4,  2, 1, -1] -> trimmed [-4, 2, 0,  0]
  //   D3 = [ 1,  1, 1,  1] -> all tied: lower indices -> [1, 1, 0, 0]
  // sum [0, 3, 0, -5]: sign [0, +, 0, -]; agreeing means [0, 1.5, 0, -5];
  // lambda 2.
  MergedDelta m =
      Ties({T({3, -1, 2, -5}), T({-4, 2, 1, -1}), T({1, 1, 1, 1})}, 0.5, 2.0);
  ExpectTensor(m.delta, {0, 3, 0, -10});
  EXPECT_TRUE(m.mask.equal(M({0, 1, 0, 1})));
}

TEST(TiesTest, DensityOneWithoutConflictIsTheMean) {
  MergedDelta m = Ties({T({2, 4}), T({4, 2})}, 1.0, 1.0);
  ExpectTensor(m.delta, {3, 3});
}

TEST(DareTest, NoDropIsTaskArithmetic) {
  std::vector<at::Tensor> d = {at::randn({5, 7}, at::kDouble),
                               at::randn({5, 7}, at::kDouble)};
  EXPECT_TRUE(
      Dare(d, 0.0, 0.7, 1, "w").delta.equal(TaskArithmetic(d, 0.7).delta));
}

TEST(DareTest, SurvivorsAreRescaledAndDropRateIsP) {
  at::Tensor d = at::ones({100000}, at::kDouble) * 3;
  MergedDelta m = Dare({d}, 0.75, 1.0, 123, "layer.weight");
  at::Tensor kept = m.delta.ne(0);
  EXPECT_TRUE(
      m.delta.index({kept}).eq(12).all().item<bool>());  // 3 / (1 - 0.75)
  const double dropped = 1.0 - kept.to(at::kDouble).mean().item<double>();
  EXPECT_NEAR(dropped, 0.75, 0.01);
  EXPECT_TRUE(m.mask.equal(kept));
}

TEST(DareTest, DeterministicPerSeedNameAndTask) {
  at::Tensor d = at::ones({1000}, at::kDouble);
  at::Tensor a = Dare({d}, 0.5, 1.0, 7, "a.weight").delta;
  EXPECT_TRUE(a.equal(Dare({d}, 0.5, 1.0, 7, "a.weight").delta));
  EXPECT_FALSE(a.equal(Dare({d}, 0.5, 1.0, 8, "a.weight").delta));
  EXPECT_FALSE(a.equal(Dare({d}, 0.5, 1.0, 7, "b.weight").delta));
  // Two identical tasks draw different masks (the task index is in the key).
  at::Tensor two = Dare({d, d}, 0.5, 1.0, 7, "a.weight").delta;
  EXPECT_TRUE(two.eq(4).any().item<bool>());  // both survived: 2 + 2
  EXPECT_TRUE(two.eq(2).any().item<bool>());  // exactly one survived
  // Float32 input works too.
  EXPECT_EQ(
      Dare({d.to(at::kFloat)}, 0.5, 1.0, 7, "a.weight").delta.scalar_type(),
      at::kFloat);
}

TEST(DareTest, SameResultFromConcurrentThreadsInAnyOrder) {
  at::Tensor d = at::randn({64, 64}, at::kDouble);
  const std::vector<std::string> names = {"w0", "w1", "w2", "w3"};
  std::vector<at::Tensor> serial;
  for (const auto& n : names) serial.push_back(Dare({d}, 0.9, 1.0, 3, n).delta);
  std::vector<at::Tensor> parallel(names.size());
  std::vector<std::thread> threads;
  for (int i = static_cast<int>(names.size()) - 1; i >= 0; --i) {
    threads.emplace_back(
        [&, i] { parallel[i] = Dare({d}, 0.9, 1.0, 3, names[i]).delta; });
  }
  for (auto& t : threads) t.join();
  for (size_t i = 0; i < names.size(); ++i)
    EXPECT_TRUE(parallel[i].equal(serial[i]));
}

TEST(SpiderTest, HandComputedWithoutImportance) {
  // |W| = [1,2,3,4] -> I = sigmoid(zscore) = [.2072, .3900, .6100, .7928];
  // g = |D| = [4,3,2,1] -> G = [.7928, .6100, .3900, .2072]; G > I at 0, 1;
  // M = G / (G + I) = [.79277, .60998]; / mean .70138 -> [1 (capped), .86970].
  MergedDelta m = Spider(T({1, 2, 3, 4}), T({4, 3, 2, 1}), at::Tensor());
  ExpectTensor(m.delta, {4, 2.609086, 0, 0}, 1e-5);
  EXPECT_TRUE(m.mask.equal(M({1, 1, 0, 0})));
}

TEST(SpiderTest, HandComputedWithImportance) {
  // g = [0,0,0,1] -> G = [.35954 x3, .84968]; G > I at 0 and 3;
  // M = [.63437, .51733] / mean .57585 -> [1 (capped), .89838].
  MergedDelta m = Spider(T({1, 2, 3, 4}), T({4, 3, 2, 1}), T({0, 0, 0, 1}));
  ExpectTensor(m.delta, {4, 0, 0, 0.898383}, 1e-5);
  EXPECT_TRUE(m.mask.equal(M({1, 0, 0, 1})));
}

TEST(SpiderTest, NothingImportantChangesNothing) {
  MergedDelta m = Spider(T({1, 1, 1, 1}), T({2, 2, 2, 2}), at::Tensor());
  EXPECT_FALSE(m.mask.any().item<bool>());
  ExpectTensor(m.delta, {0, 0, 0, 0});
}

TEST(MergeMethodsTest, ParseAggregation) {
  EXPECT_EQ(*ParseAggregation("mean_selected"), Aggregation::kMeanSelected);
  EXPECT_EQ(*ParseAggregation("mean_all"), Aggregation::kMeanAll);
  EXPECT_EQ(*ParseAggregation("sum"), Aggregation::kSum);
  EXPECT_EQ(AggregationName(Aggregation::kMeanAll), "mean_all");
  auto bad = ParseAggregation("median");
  EXPECT_EQ(bad.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(
      absl::StrContains(bad.status().message(), "mean_selected|mean_all|sum"));
}

}  // namespace
}  // namespace tailor
