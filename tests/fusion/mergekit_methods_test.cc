// The mergekit-family methods (mergekit_methods.h): small cases computed by
// hand (every expected number written out), and a float64 brute-force loop
// over each paper's formula on random tensors.

#include "fusion/mergekit_methods.h"

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <string>
#include <vector>

namespace tailor {
namespace {

at::Tensor T(std::vector<double> v) { return at::tensor(v, at::kDouble); }

void ExpectTensor(const at::Tensor& got, std::vector<double> want,
                  double tol = 1e-12) {
  ASSERT_EQ(got.numel(), static_cast<int64_t>(want.size()));
  at::Tensor g = got.to(at::kDouble).reshape({-1});
  for (size_t i = 0; i < want.size(); ++i) {
    EXPECT_NEAR(g[i].item<double>(), want[i], tol) << "index " << i;
  }
}

MergekitParams Params(Method method, size_t tasks) {
  FusionSpec spec;
  spec.method = method;
  spec.tasks.resize(tasks);
  return MergekitParamsOf(spec);
}

at::Tensor Merge(const MergekitParams& p, const at::Tensor& pre,
                 const std::vector<at::Tensor>& deltas,
                 const std::string& name = "w") {
  return MergekitMerge(p, pre, deltas, name).delta;
}

// --- hand-computed ---

TEST(LinearTest, WeightedMeanOfTheFineTunedWeights) {
  // pre [1,2,3]; ft1 = [2,2,5], ft2 = [4,0,3]; weights 1, 3:
  // (ft1 + 3 ft2) / 4 = [3.5, 0.5, 3.5], minus pre.
  MergekitParams p = Params(Method::kLinear, 2);
  p.weights = {1, 3};
  const at::Tensor pre = T({1, 2, 3});
  const std::vector<at::Tensor> d = {T({1, 0, 2}), T({3, -2, 0})};
  ExpectTensor(Merge(p, pre, d), {2.5, -1.5, 0.5});
  // Without normalize: ft1 + 3 ft2 = [14, 2, 14], minus pre.
  p.normalize = false;
  MergedDelta m = MergekitMerge(p, pre, d, "w");
  ExpectTensor(m.delta, {13, 0, 11});
  EXPECT_TRUE(m.mask.equal(T({1, 0, 1}).ne(0)));
}

TEST(SlerpTest, OrthogonalUnitVectorsAtHalf) {
  // v0 = [1,0], v1 = [0,1]: theta = pi/2, s0 = s1 = sin(pi/4) = sqrt(2)/2.
  MergekitParams p = Params(Method::kSlerp, 1);
  p.t = 0.5;
  const double h = std::sqrt(2.0) / 2;
  ExpectTensor(Merge(p, T({1, 0}), {T({-1, 1})}), {h - 1, h});
  // Different norms: v0 = [2,0], v1 = [0,1]: fused = [2h, h].
  ExpectTensor(Merge(p, T({2, 0}), {T({-2, 1})}), {2 * h - 2, h});
}

TEST(SlerpTest, EndsAreTheTwoModels) {
  MergekitParams p = Params(Method::kSlerp, 1);
  p.t = 0;
  ExpectTensor(Merge(p, T({1, 0}), {T({-1, 1})}), {0, 0});
  p.t = 1;
  ExpectTensor(Merge(p, T({1, 0}), {T({-1, 1})}), {-1, 1});
}

TEST(SlerpTest, NearlyColinearFallsBackToLerp) {
  // [1,2] and [2,4.002]: cos > 0.9995, so (1-t) v0 + t v1 = v0 + t D.
  MergekitParams p = Params(Method::kSlerp, 1);
  p.t = 0.25;
  ExpectTensor(Merge(p, T({1, 2}), {T({1, 2.002})}), {0.25, 0.5005});
}

TEST(ModelStockTest, RatioFromTheAngle) {
  // D1 = [1,1], D2 = [1,0]: cos = 1/sqrt2, t = 2 cos / (1 + cos)
  // = 2 (sqrt2 - 1); delta = t * mean = t * [1, 0.5].
  MergekitParams p = Params(Method::kModelStock, 2);
  const double t = 2 * (std::sqrt(2.0) - 1);
  ExpectTensor(Merge(p, T({5, 5}), {T({1, 1}), T({1, 0})}), {t, t / 2});
  // Orthogonal task vectors: t = 0, the base is kept.
  ExpectTensor(Merge(p, T({5, 5}), {T({1, 0}), T({0, 1})}), {0, 0});
  // Identical ones: t = 1, their mean.
  ExpectTensor(Merge(p, T({5, 5}), {T({2, 1}), T({2, 1})}), {2, 1});
}

TEST(TiesRulesTest, ExactCancellationZeroOrMergekitsPositive) {
  // The case: +0.5 and -0.5 cancel exactly. Ours elects no sign
  // and writes 0; mergekit elects + (sum >= 0) and writes 0.5.
  MergekitParams p = Params(Method::kTies, 2);
  p.density = 1;
  const std::vector<at::Tensor> d = {T({0.5, 1}), T({-0.5, 3})};
  ExpectTensor(Merge(p, T({0, 0}), d), {0, 2});
  p.sign_cancel = SignCancel::kPositive;
  ExpectTensor(Merge(p, T({0, 0}), d), {0.5, 2});
  // Ties() (merge_methods.h) agrees with the default rule.
  ExpectTensor(Ties(d, 1.0, 1.0).delta, {0, 2});
}

TEST(TiesRulesTest, CountRuleRoundOrFloor) {
  // n = 5, density 0.5: round(2.5) = 3 entries kept, floor: 2.
  MergekitParams p = Params(Method::kTies, 1);
  p.density = 0.5;
  const std::vector<at::Tensor> d = {T({1, 5, 3, 4, 2})};
  ExpectTensor(Merge(p, T({0, 0, 0, 0, 0}), d), {0, 5, 3, 4, 0});
  p.count_rule = CountRule::kFloor;
  ExpectTensor(Merge(p, T({0, 0, 0, 0, 0}), d), {0, 5, 0, 4, 0});
  EXPECT_EQ(RuleCount(CountRule::kRound, 0.5, 5), 3);
  EXPECT_EQ(RuleCount(CountRule::kFloor, 0.5, 5), 2);
  EXPECT_EQ(RuleCount(CountRule::kFloor, 0.999, 1000), 999);
}

TEST(TiesRulesTest, MagnitudeTiesGoToTheLowerIndex) {
  MergekitParams p = Params(Method::kTies, 1);
  p.density = 0.5;
  p.count_rule = CountRule::kFloor;
  ExpectTensor(Merge(p, T({0, 0, 0, 0}), {T({-1, 1, 1, -1})}), {-1, 1, 0, 0});
}

TEST(TiesRulesTest, WeightedElectionAndNormalisation) {
  // w = 1, 2: wr1 = [2, -1], wr2 = [-2, 6]; sums [0, 5].
  MergekitParams p = Params(Method::kTies, 2);
  p.density = 1;
  p.weights = {1, 2};
  const std::vector<at::Tensor> d = {T({2, -1}), T({-1, 3})};
  ExpectTensor(Merge(p, T({0, 0}), d), {0, 3});  // 6 / 2
  p.sign_cancel = SignCancel::kPositive;
  ExpectTensor(Merge(p, T({0, 0}), d), {2, 3});  // 2 / 1
  p.normalize = false;
  ExpectTensor(Merge(p, T({0, 0}), d), {2, 6});
}

TEST(TiesRulesTest, DefaultsAreTiesBitForBit) {
  at::manual_seed(3);
  for (at::ScalarType type : {at::kFloat, at::kDouble}) {
    std::vector<at::Tensor> d;
    for (int i = 0; i < 3; ++i) d.push_back(at::randn({17, 9}).to(type));
    MergekitParams p = Params(Method::kTies, 3);
    p.density = 0.3;
    p.lambda = 0.7;
    EXPECT_TRUE(Merge(p, d[0], d).equal(Ties(d, 0.3, 0.7).delta));
  }
}

TEST(BreadcrumbsTest, DropsTheLargestAndTheSmallest) {
  // n = 10, density 0.5, gamma 0.1: the largest |D| (10) dropped, the next
  // five kept (-8, 7, 6, -5, 4), the four smallest dropped.
  MergekitParams p = Params(Method::kBreadcrumbs, 1);
  p.density = 0.5;
  p.gamma = 0.1;
  const at::Tensor d = T({1, -8, 3, 0.5, 6, -2, 7, 4, -5, 10});
  ExpectTensor(Merge(p, at::zeros({10}, at::kDouble), {d}),
               {0, -8, 0, 0, 6, 0, 7, 4, -5, 0});
  // gamma 0.6 > 1 - density: only 5 of the largest go, none of the
  // smallest (mergekit's edge case).
  p.gamma = 0.6;
  ExpectTensor(Merge(p, at::zeros({10}, at::kDouble), {d}),
               {1, 0, 3, 0.5, 0, -2, 0, 4, 0, 0});
}

TEST(BreadcrumbsTest, WeightsAndNormalize) {
  MergekitParams p = Params(Method::kBreadcrumbs, 2);
  p.density = 1;
  p.weights = {1, 3};
  const std::vector<at::Tensor> d = {T({4, 0}), T({0, 4})};
  ExpectTensor(Merge(p, T({0, 0}), d), {4, 12});
  p.normalize = true;
  ExpectTensor(Merge(p, T({0, 0}), d), {1, 3});
}

TEST(DellaTest, KeepProbabilitiesFollowTheRowRanks) {
  // density 0.5, epsilon 0.2: p = 0.3 + 0.4 * rank / 2 per row.
  const at::Tensor d =
      at::tensor({3.0, -1.0, 2.0, 0.0, 5.0, -4.0}, at::kDouble).reshape({2, 3});
  ExpectTensor(DellaKeepProbabilities(d, 0.5, 0.2),
               {0.7, 0.3, 0.5, 0.3, 0.7, 0.5});
  // Equal magnitudes rank in index order; a one-entry row gets density.
  ExpectTensor(DellaKeepProbabilities(T({1, -1, 1}), 0.5, 0.2),
               {0.3, 0.5, 0.7});
  ExpectTensor(DellaKeepProbabilities(T({2}), 0.5, 0.2), {0.5});
}

TEST(DellaTest, DensityOneIsTiesElectionOfTheWholeDeltas) {
  MergekitParams p = Params(Method::kDella, 2);
  p.density = 1;
  const std::vector<at::Tensor> d = {T({0.5, 1}), T({-0.5, 3})};
  ExpectTensor(Merge(p, T({0, 0}), d), {0, 2});
}

TEST(DareTiesTest, NoDropIsTheElectionOfTheDeltas) {
  MergekitParams p = Params(Method::kDareTies, 2);
  p.drop = 0;
  p.weights = {1, 2};
  const std::vector<at::Tensor> d = {T({2, -1}), T({-1, 3})};
  ExpectTensor(Merge(p, T({0, 0}), d), {0, 6});  // normalize: false
  p.normalize = true;
  ExpectTensor(Merge(p, T({0, 0}), d), {0, 3});
}

TEST(DareTiesTest, DeterministicPerSeedAndNameAndDropRate) {
  at::manual_seed(5);
  const std::vector<at::Tensor> d = {at::randn({100, 100}, at::kDouble)};
  MergekitParams p = Params(Method::kDareTies, 1);
  p.drop = 0.7;
  const at::Tensor pre = at::zeros({100, 100}, at::kDouble);
  const at::Tensor a = Merge(p, pre, d, "x");
  EXPECT_TRUE(a.equal(Merge(p, pre, d, "x")));
  EXPECT_FALSE(a.equal(Merge(p, pre, d, "y")));
  p.seed = 1;
  EXPECT_FALSE(a.equal(Merge(p, pre, d, "x")));
  const double kept = a.ne(0).sum().item<double>() / 1e4;
  EXPECT_NEAR(kept, 0.3, 0.03);
  // Survivors are rescaled by 1 / (1 - p).
  const at::Tensor s = a.ne(0);
  EXPECT_TRUE(at::allclose(a.masked_select(s), (d[0] / 0.3).masked_select(s),
                           1e-12, 0));
}

// --- float64 brute force against each paper's formula ---

class BruteForceTest : public ::testing::Test {
 protected:
  void SetUp() override {
    at::manual_seed(17);
    pre_ = at::randn({6, 11}, at::kDouble);
    for (int i = 0; i < 3; ++i) {
      // Correlated task vectors, some entries exactly opposite.
      at::Tensor d = 0.5 * at::randn({6, 11}, at::kDouble) +
                     0.3 * at::ones({6, 11}, at::kDouble);
      deltas_.push_back(d);
    }
    deltas_[1].index_put_({0, 0}, -deltas_[0][0][0].item<double>());
    deltas_[2].index_put_({0, 0}, 0.0);
    for (const at::Tensor& d : deltas_) {
      const double* p = d.data_ptr<double>();
      flat_.emplace_back(p, p + d.numel());
    }
    const double* p = pre_.data_ptr<double>();
    pre_flat_.assign(p, p + pre_.numel());
    n_ = pre_.numel();
  }

  std::vector<double> Got(const MergekitParams& p, size_t tasks,
                          const std::string& name = "w") {
    std::vector<at::Tensor> d(deltas_.begin(), deltas_.begin() + tasks);
    at::Tensor got = Merge(p, pre_, d, name).contiguous();
    const double* g = got.data_ptr<double>();
    return std::vector<double>(g, g + got.numel());
  }

  // TIES's election and disjoint merge (Yadav et al. 2023, section 3) on
  // the sparsified r[i][j], one entry at a time.
  static std::vector<double> Elect(const std::vector<std::vector<double>>& r,
                                   const std::vector<double>& w, bool normalize,
                                   SignCancel cancel, double lambda) {
    std::vector<double> out(r[0].size());
    for (size_t j = 0; j < out.size(); ++j) {
      double total = 0;
      for (size_t i = 0; i < r.size(); ++i) total += w[i] * r[i][j];
      const int sign = cancel == SignCancel::kZero ? (total > 0) - (total < 0)
                                                   : (total >= 0 ? 1 : -1);
      double mixed = 0, div = 0;
      for (size_t i = 0; i < r.size(); ++i) {
        const double v = w[i] * r[i][j];
        if (v != 0 && sign != 0 && ((v > 0) - (v < 0)) == sign) {
          mixed += v;
          div += w[i];
        }
      }
      if (normalize && div != 0) mixed /= div;
      out[j] = mixed * lambda;
    }
    return out;
  }

  // The indices of x ordered by |x| descending, ties to the lower index.
  static std::vector<int64_t> ByMagnitude(const std::vector<double>& x) {
    std::vector<int64_t> idx(x.size());
    std::iota(idx.begin(), idx.end(), 0);
    std::stable_sort(idx.begin(), idx.end(), [&](int64_t a, int64_t b) {
      return std::fabs(x[a]) > std::fabs(x[b]);
    });
    return idx;
  }

  void ExpectNear(const std::vector<double>& got,
                  const std::vector<double>& want, double tol = 1e-12) {
    ASSERT_EQ(got.size(), want.size());
    for (size_t j = 0; j < got.size(); ++j) {
      EXPECT_NEAR(got[j], want[j], tol) << "entry " << j;
    }
  }

  at::Tensor pre_;
  std::vector<at::Tensor> deltas_;
  std::vector<std::vector<double>> flat_;
  std::vector<double> pre_flat_;
  int64_t n_ = 0;
};

TEST_F(BruteForceTest, Linear) {
  MergekitParams p = Params(Method::kLinear, 3);
  p.weights = {0.2, 1.5, -0.4};
  for (bool normalize : {true, false}) {
    p.normalize = normalize;
    const double sw = 0.2 + 1.5 - 0.4;
    std::vector<double> want(n_);
    for (int64_t j = 0; j < n_; ++j) {
      double fused = 0;
      for (int i = 0; i < 3; ++i) {
        fused += p.weights[i] * (pre_flat_[j] + flat_[i][j]);
      }
      if (normalize) fused /= sw;
      want[j] = fused - pre_flat_[j];
    }
    ExpectNear(Got(p, 3), want, 1e-9);
  }
}

TEST_F(BruteForceTest, Slerp) {
  for (double t : {0.0, 0.3, 0.5, 0.9, 1.0}) {
    MergekitParams p = Params(Method::kSlerp, 1);
    p.t = t;
    double n0 = 0, n1 = 0, dot = 0;
    for (int64_t j = 0; j < n_; ++j) {
      const double v0 = pre_flat_[j], v1 = pre_flat_[j] + flat_[0][j];
      n0 += v0 * v0;
      n1 += v1 * v1;
      dot += v0 * v1;
    }
    const double c = dot / std::sqrt(n0) / std::sqrt(n1);
    const double theta = std::acos(c);
    std::vector<double> want(n_);
    for (int64_t j = 0; j < n_; ++j) {
      const double v0 = pre_flat_[j], v1 = pre_flat_[j] + flat_[0][j];
      want[j] = std::sin((1 - t) * theta) / std::sin(theta) * v0 +
                std::sin(t * theta) / std::sin(theta) * v1 - v0;
    }
    ExpectNear(Got(p, 1), want, 1e-9);
  }
}

TEST_F(BruteForceTest, ModelStock) {
  for (size_t k : {2, 3}) {
    MergekitParams p = Params(Method::kModelStock, k);
    double cos_sum = 0;
    int pairs = 0;
    for (size_t a = 0; a < k; ++a) {
      for (size_t b = a + 1; b < k; ++b, ++pairs) {
        double dab = 0, na = 0, nb = 0;
        for (int64_t j = 0; j < n_; ++j) {
          dab += flat_[a][j] * flat_[b][j];
          na += flat_[a][j] * flat_[a][j];
          nb += flat_[b][j] * flat_[b][j];
        }
        cos_sum += dab / std::sqrt(na * nb);
      }
    }
    const double c = cos_sum / pairs;
    const double t = k * c / (1 + (k - 1.0) * c);  // Jang et al., eq. 6
    std::vector<double> want(n_);
    for (int64_t j = 0; j < n_; ++j) {
      double avg = 0;
      for (size_t i = 0; i < k; ++i) avg += pre_flat_[j] + flat_[i][j];
      avg /= k;
      want[j] = t * avg + (1 - t) * pre_flat_[j] - pre_flat_[j];
    }
    ExpectNear(Got(p, k), want, 1e-9);
  }
}

TEST_F(BruteForceTest, TaskArithmeticWithWeights) {
  MergekitParams p = Params(Method::kTaskArithmetic, 3);
  p.weights = {0.5, 2, 1};
  p.lambda = 0.8;
  std::vector<double> want(n_);
  for (int64_t j = 0; j < n_; ++j) {
    for (int i = 0; i < 3; ++i) want[j] += p.weights[i] * flat_[i][j];
    want[j] *= 0.8;
  }
  ExpectNear(Got(p, 3), want);
}

TEST_F(BruteForceTest, TiesWithEveryRule) {
  for (CountRule rule : {CountRule::kRound, CountRule::kFloor}) {
    for (SignCancel cancel : {SignCancel::kZero, SignCancel::kPositive}) {
      for (bool normalize : {true, false}) {
        MergekitParams p = Params(Method::kTies, 3);
        p.weights = {1, 0.5, 2};
        p.density = 0.35;
        p.count_rule = rule;
        p.sign_cancel = cancel;
        p.normalize = normalize;
        const double x = 0.35 * n_;
        const int64_t k = static_cast<int64_t>(
            rule == CountRule::kRound ? std::round(x) : std::floor(x));
        std::vector<std::vector<double>> r;
        for (int i = 0; i < 3; ++i) {
          std::vector<double> t(n_, 0.0);
          const std::vector<int64_t> order = ByMagnitude(flat_[i]);
          for (int64_t q = 0; q < k; ++q) t[order[q]] = flat_[i][order[q]];
          r.push_back(t);
        }
        ExpectNear(Got(p, 3), Elect(r, p.weights, normalize, cancel, 1.0));
      }
    }
  }
}

TEST_F(BruteForceTest, Breadcrumbs) {
  MergekitParams p = Params(Method::kBreadcrumbs, 3);
  p.weights = {1, 0.5, 2};
  p.density = 0.6;
  p.gamma = 0.1;
  p.lambda = 1.2;
  const int64_t target = std::llround(0.6 * n_), top = std::llround(0.1 * n_);
  std::vector<double> want(n_, 0.0);
  for (int i = 0; i < 3; ++i) {
    const std::vector<int64_t> order = ByMagnitude(flat_[i]);
    // Davari and Belilovsky: drop the top gamma, keep the next `target`.
    for (int64_t q = top; q < top + target; ++q) {
      want[order[q]] += p.weights[i] * flat_[i][order[q]];
    }
  }
  for (double& v : want) v *= 1.2;
  ExpectNear(Got(p, 3), want);
}

TEST_F(BruteForceTest, DareTies) {
  MergekitParams p = Params(Method::kDareTies, 3);
  p.weights = {1, 0.5, 2};
  p.drop = 0.4;
  p.seed = 9;
  std::vector<std::vector<double>> r;
  for (int i = 0; i < 3; ++i) {
    at::Generator gen =
        at::make_generator<at::CPUGeneratorImpl>(DrawSeed(9, "w", i));
    const at::Tensor u = at::rand({n_}, gen, at::kDouble);
    std::vector<double> t(n_, 0.0);
    for (int64_t j = 0; j < n_; ++j) {
      // Yu et al., eq. 2: drop with probability p, rescale by 1 / (1 - p).
      if (u[j].item<double>() >= 0.4) t[j] = flat_[i][j] / (1 - 0.4);
    }
    r.push_back(t);
  }
  ExpectNear(Got(p, 3), Elect(r, p.weights, false, SignCancel::kZero, 1.0));
}

TEST_F(BruteForceTest, Della) {
  MergekitParams p = Params(Method::kDella, 3);
  p.density = 0.5;
  p.epsilon = 0.2;
  p.seed = 4;
  const int64_t rows = 6, cols = 11;
  std::vector<std::vector<double>> r;
  for (int i = 0; i < 3; ++i) {
    at::Generator gen =
        at::make_generator<at::CPUGeneratorImpl>(DrawSeed(4, "w", i));
    const at::Tensor u = at::rand({n_}, gen, at::kDouble);
    std::vector<double> t(n_, 0.0);
    for (int64_t row = 0; row < rows; ++row) {
      std::vector<double> x(flat_[i].begin() + row * cols,
                            flat_[i].begin() + (row + 1) * cols);
      // Ascending |D|, equal magnitudes in index order.
      std::vector<int64_t> asc(cols);
      std::iota(asc.begin(), asc.end(), 0);
      std::stable_sort(asc.begin(), asc.end(), [&](int64_t a, int64_t b) {
        return std::fabs(x[a]) < std::fabs(x[b]);
      });
      for (int64_t rank = 0; rank < cols; ++rank) {
        const int64_t j = row * cols + asc[rank];
        // Deep et al., MagPrune: p from density - eps to density + eps by
        // rank; a survivor rescaled by 1 / p.
        const double prob = 0.5 - 0.2 + 0.4 * rank / (cols - 1.0);
        if (u[j].item<double>() < prob) t[j] = flat_[i][j] / prob;
      }
    }
    r.push_back(t);
  }
  ExpectNear(Got(p, 3), Elect(r, p.weights, true, SignCancel::kZero, 1.0));
}

TEST(MergekitPathTest, WhichSpecsUseItAndStream) {
  FusionSpec s;
  s.tasks.resize(2);
  s.method = Method::kTies;
  EXPECT_FALSE(UsesMergekitPath(s));
  s.sign_cancel = SignCancel::kPositive;
  EXPECT_TRUE(UsesMergekitPath(s));
  EXPECT_FALSE(MergekitStreams(s));
  s = FusionSpec();
  s.tasks.resize(2);
  s.method = Method::kTaskArithmetic;
  EXPECT_FALSE(UsesMergekitPath(s));
  s.tasks[1].weight = 2;
  EXPECT_TRUE(UsesMergekitPath(s));
  EXPECT_TRUE(MergekitStreams(s));
  for (Method m : {Method::kLinear, Method::kSlerp, Method::kDareTies,
                   Method::kModelStock}) {
    s.method = m;
    EXPECT_TRUE(MergekitStreams(s));
  }
  for (Method m : {Method::kBreadcrumbs, Method::kDella}) {
    s.method = m;
    EXPECT_TRUE(UsesMergekitPath(s));
    EXPECT_FALSE(MergekitStreams(s));
  }
}

}  // namespace
}  // namespace tailor
