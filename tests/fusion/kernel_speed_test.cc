// Issue #11 (kernel speed): the fast paths against the definitions they
// replace, written here with the plain tensor ops of the previous kernel --
// bit for bit where the contract is "the same bits", to 1e-9 where it is a
// different formula for the same number.

#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <cmath>
#include <limits>
#include <thread>
#include <vector>

#include "fusion/calibration.h"
#include "fusion/merge_methods.h"
#include "fusion/tailor_kernel.h"
#include "fusion/top_k.h"

namespace tailor {
namespace {

using at::indexing::Slice;

// --- Definitions of the previous kernel (tensor ops). ---

at::Tensor SortTopKRows(const at::Tensor& scores, int64_t k) {
  at::Tensor mask =
      at::zeros(scores.sizes(), scores.options().dtype(at::kBool));
  if (k <= 0) return mask;
  at::Tensor order =
      std::get<1>(scores.sort(/*stable=*/true, /*dim=*/1, /*descending=*/true));
  mask.scatter_(1, order.index({Slice(), Slice(0, k)}), true);
  return mask;
}

at::Tensor SortTopKFlat(const at::Tensor& scores, int64_t k) {
  return SortTopKRows(scores.reshape({1, -1}), k).view(scores.sizes());
}

at::Tensor OldMinMax(const at::Tensor& x) {
  at::Tensor lo = std::get<0>(x.min(1, /*keepdim=*/true));
  at::Tensor hi = std::get<0>(x.max(1, /*keepdim=*/true));
  at::Tensor range = hi - lo;
  return at::where(range > 0, (x - lo) / range.clamp_min(1e-300),
                   at::zeros_like(x));
}

at::Tensor OldNormalize(const at::Tensor& x, bool per_row) {
  if (per_row) return OldMinMax(x);
  return OldMinMax(x.reshape({1, -1})).view(x.sizes());
}

at::Tensor OldScores(const at::Tensor& d, const at::Tensor& diag, double omega,
                     bool per_row) {
  at::Tensor salience = d.abs();
  if (!diag.defined() || omega >= 1.0) return OldNormalize(salience, per_row);
  at::Tensor sensitivity = d.pow(2) / (2.0 * diag.unsqueeze(0));
  return omega * OldNormalize(salience, per_row) +
         (1.0 - omega) * OldNormalize(sensitivity, per_row);
}

// The previous CompensateSequential: per-column tensor ops.
at::Tensor OldSequential(const at::Tensor& d0, const at::Tensor& mask,
                         const at::Tensor& u, int64_t block) {
  at::Tensor d = d0.clone();
  for (int64_t i1 = 0; i1 < d.size(1); i1 += block) {
    const int64_t i2 = std::min(d.size(1), i1 + block);
    at::Tensor w1 = d.index({Slice(), Slice(i1, i2)}).clone();
    at::Tensor m1 = mask.index({Slice(), Slice(i1, i2)});
    at::Tensor u1 = u.index({Slice(i1, i2), Slice(i1, i2)});
    at::Tensor err1 = at::zeros_like(w1);
    for (int64_t i = 0; i < w1.size(1); ++i) {
      at::Tensor w = w1.select(1, i);
      at::Tensor q = at::where(m1.select(1, i), w, at::zeros_like(w));
      at::Tensor err = (w - q) / u1.index({i, i});
      w1.index({Slice(), Slice(i, at::indexing::None)})
          .sub_(err.unsqueeze(1) *
                u1.index({i, Slice(i, at::indexing::None)}).unsqueeze(0));
      w1.select(1, i).copy_(q);
      err1.select(1, i).copy_(err);
    }
    d.index({Slice(), Slice(i1, i2)}).copy_(w1);
    if (i2 < d.size(1)) {
      d.index({Slice(), Slice(i2, at::indexing::None)})
          .sub_(err1.matmul(
              u.index({Slice(i1, i2), Slice(i2, at::indexing::None)})));
    }
  }
  return d;
}

// SparseGPT's preparation: cholesky -> cholesky_inverse -> cholesky.
struct OldPrepared {
  at::Tensor h, hinv_diag, u;
};
OldPrepared OldPrepare(const at::Tensor& h_in, double damp) {
  at::Tensor h = h_in.clone();
  at::Tensor diag = h.diagonal();
  diag.masked_fill_(diag == 0, 1.0);
  h.diagonal().add_(damp * diag.mean().item<double>());
  at::Tensor hinv = at::cholesky_inverse(at::linalg_cholesky(h));
  return {h, hinv.diagonal().clone(), at::linalg_cholesky(hinv, true)};
}

at::Tensor RandomSpd(int64_t c, uint64_t seed, at::ScalarType type) {
  at::manual_seed(seed);
  at::Tensor mix =
      at::randn({c, c}, at::kDouble) * 0.5 + at::eye(c, at::kDouble);
  at::Tensor x = at::randn({3 * c, c}, at::kDouble).matmul(mix);
  return (2.0 / (3 * c) * x.t().matmul(x)).to(type);
}

TailorOptions Options(bool f64, Scope scope = Scope::kLayer) {
  TailorOptions o;
  o.float64 = f64;
  o.scope = scope;
  return o;
}

// --- Item 4: top-k without a sort, the sort's mask bit for bit. ---

TEST(TopKTest, MatchesStableSortWithTiesNanAndSignedZeros) {
  for (at::ScalarType type : {at::kFloat, at::kDouble}) {
    for (uint64_t seed = 0; seed < 6; ++seed) {
      at::manual_seed(seed);
      const int64_t n = 1000 + 37 * seed;
      // Few distinct values: heavy ties across the k-th value.
      at::Tensor v = at::randint(-4, 5, {n}, at::kLong).to(type) * 0.25;
      v.index_put_({Slice(0, 17)}, -0.0);
      v.index_put_({Slice(40, 60)}, std::numeric_limits<double>::quiet_NaN());
      v.index_put_({Slice(70, 75)}, std::numeric_limits<double>::infinity());
      v.index_put_({Slice(80, 85)}, -std::numeric_limits<double>::infinity());
      v = v.index({at::randperm(n, at::kLong)});
      for (int64_t k :
           {int64_t{0}, int64_t{1}, int64_t{3}, n / 10, n / 2, n - 1, n}) {
        at::Tensor want = SortTopKFlat(v, k);
        ASSERT_TRUE(TopKMaskFlat(v, k).equal(want))
            << "type " << type << " seed " << seed << " k " << k;
        ASSERT_TRUE(TopKAbsMaskFlat(v, k).equal(SortTopKFlat(v.abs(), k)))
            << "abs, type " << type << " seed " << seed << " k " << k;
      }
    }
  }
}

TEST(TopKTest, ContinuousValuesRowsAndAllEqual) {
  at::manual_seed(3);
  at::Tensor s = at::rand({37, 53}, at::kFloat);
  for (int64_t k : {int64_t{0}, int64_t{5}, int64_t{26}, int64_t{53}}) {
    EXPECT_TRUE(TopKMaskRows(s, k).equal(SortTopKRows(s, k))) << k;
  }
  EXPECT_TRUE(TopKMaskFlat(s, 200).equal(SortTopKFlat(s, 200)));
  // All equal: the lowest indices win.
  at::Tensor same = at::ones({10}, at::kDouble);
  at::Tensor m = TopKMaskFlat(same, 4);
  EXPECT_EQ(m.index({Slice(0, 4)}).all().item<bool>(), true);
  EXPECT_EQ(m.index({Slice(4, 10)}).any().item<bool>(), false);
}

TEST(TopKTest, SelectMaskEveryScopeMatchesTheSort) {
  at::manual_seed(5);
  // Quantised scores so that ties cross every boundary.
  at::Tensor s = at::randint(0, 7, {24, 40}, at::kLong).to(at::kFloat) / 7;
  TailorOptions o;
  o.keep_ratio = 0.3;
  o.block_size = 16;
  o.scope = Scope::kLayer;
  EXPECT_TRUE(SelectMask(s, o).equal(SortTopKFlat(s, KeepCount(0.3, 960))));
  o.scope = Scope::kRow;
  EXPECT_TRUE(SelectMask(s, o).equal(SortTopKRows(s, KeepCount(0.3, 40))));
  o.scope = Scope::kBlock;
  std::vector<at::Tensor> parts;
  for (int64_t j = 0; j < 40; j += 16) {
    at::Tensor b = s.index({Slice(), Slice(j, std::min<int64_t>(40, j + 16))});
    parts.push_back(SortTopKFlat(b, KeepCount(0.3, b.numel())));
  }
  EXPECT_TRUE(SelectMask(s, o).equal(at::cat(parts, 1)));
}

TEST(TopKTest, TiesTrimIsTheSortedTopK) {
  at::manual_seed(9);
  at::Tensor d = at::randint(-3, 4, {30, 20}, at::kLong).to(at::kFloat);
  MergedDelta m = Ties({d}, 0.25, 1.0);
  at::Tensor keep = SortTopKFlat(d.abs(), KeepCount(0.25, d.numel()));
  at::Tensor want = at::where(keep, d, at::zeros({}, d.options()));
  EXPECT_TRUE(m.delta.equal(want));
}

// --- Item 3: scores and the OBS loop, the previous bits. ---

TEST(KernelSpeedTest, FusedScoresAreThePreviousBits) {
  for (at::ScalarType type : {at::kFloat, at::kDouble}) {
    at::manual_seed(11);
    at::Tensor d = at::randn({33, 47}, type) * 0.01;
    d.index_put_({0, 0}, 0.0);
    at::Tensor diag = at::rand({47}, type) + 0.1;
    for (Scope scope : {Scope::kLayer, Scope::kRow, Scope::kBlock}) {
      for (double omega : {0.0, 0.3, 0.5, 1.0}) {
        TailorOptions o = Options(type == at::kDouble, scope);
        o.omega = omega;
        const bool per_row = scope == Scope::kRow;
        EXPECT_TRUE(
            FusedScores(d, diag, o).equal(OldScores(d, diag, omega, per_row)))
            << type << " scope " << static_cast<int>(scope) << " omega "
            << omega;
        EXPECT_TRUE(FusedScores(d, at::Tensor(), o)
                        .equal(OldScores(d, at::Tensor(), omega, per_row)));
      }
    }
    // A constant tensor scores 0 everywhere.
    at::Tensor c = at::full({4, 5}, 0.5, type);
    EXPECT_TRUE(FusedScores(c, at::ones({5}, type), Options(false))
                    .equal(at::zeros_like(c)));
  }
}

TEST(KernelSpeedTest, SequentialIsThePreviousLoopBitForBit) {
  for (at::ScalarType type : {at::kFloat, at::kDouble}) {
    const int64_t rows = 29, cols = 70;
    at::Tensor h = RandomSpd(cols, 4, type);
    OldPrepared p = OldPrepare(h, 0.01);
    at::manual_seed(12);
    at::Tensor d0 = at::randn({rows, cols}, type);
    at::Tensor mask = at::rand({rows, cols}, at::kFloat) < 0.3;
    for (int64_t block : {int64_t{1}, int64_t{16}, int64_t{32}, int64_t{128}}) {
      double err_sq = -1;
      at::Tensor got = CompensateSequential(d0, mask, p.u, block, &err_sq);
      at::Tensor want = OldSequential(d0, mask, p.u, block);
      EXPECT_TRUE(got.equal(want)) << type << " block " << block;
      EXPECT_GT(err_sq, 0);
    }
  }
}

TEST(KernelSpeedTest, FiniteCheckFindsEveryNonFiniteWithoutATemporary) {
  for (at::ScalarType type : {at::kFloat, at::kDouble}) {
    for (double bad : {std::numeric_limits<double>::quiet_NaN(),
                       std::numeric_limits<double>::infinity(),
                       -std::numeric_limits<double>::infinity()}) {
      for (int64_t at_index :
           {int64_t{0}, int64_t{16383}, int64_t{16384}, int64_t{40000 - 1}}) {
        at::Tensor t = at::randn({40000}, type);
        EXPECT_TRUE(CheckFiniteTensor(t, "w", "x").ok());
        t.index_put_({at_index}, bad);
        absl::Status s = CheckFiniteTensor(t, "w", "fine-tuned tensor");
        EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument)
            << type << " " << bad << " at " << at_index;
        EXPECT_EQ(s.message(), "w: fine-tuned tensor contains NaN or Inf");
        // A strided view takes the tensor-op path: same answer.
        EXPECT_FALSE(CheckFiniteTensor(t.view({200, 200}).t(), "w", "x").ok());
      }
    }
    // The largest finite values are finite.
    EXPECT_TRUE(CheckFiniteTensor(
                    at::full({3}, type == at::kFloat ? 3.4e38 : 1.7e308, type),
                    "w", "x")
                    .ok());
  }
}

TEST(KernelSpeedTest, OverflowingCompensationFallsBackToTheOriginalDelta) {
  // Column 0 is reverted onto column 1 through U_01 ~ -7 (strongly
  // correlated inputs): 3.1e38 + 0.99 * 3e38 overflows float32. The
  // sequential loop runs in place, so the fallback must rebuild D0.
  at::Tensor h = at::tensor({1.0, 0.99, 0.99, 1.0}, at::kFloat).view({2, 2});
  at::Tensor pre = at::zeros({1, 2}, at::kFloat);
  at::Tensor ft = at::tensor({3e38, 3.1e38}, at::kFloat).view({1, 2});
  TailorOptions o = Options(false);
  o.keep_ratio = 0.5;
  o.omega = 1.0;
  auto r = TailorLayer("w", pre, ft, h, o);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->stats.compensation, "none");
  EXPECT_EQ(r->stats.fallback_reason,
            "compensation produced non-finite values");
  EXPECT_TRUE(r->mask.equal(at::tensor({0, 1}).to(at::kBool).view({1, 2})));
  EXPECT_TRUE(
      r->delta.equal(at::tensor({0.0f, 3.1e38f}, at::kFloat).view({1, 2})));
  EXPECT_EQ(r->stats.error_compensated, r->stats.error_mask_only);
}

// --- Item 1: the free yardstick equals the GEMM one. ---

TEST(KernelSpeedTest, FreeCompensatedErrorEqualsTheGemmValue) {
  for (Scope scope : {Scope::kLayer, Scope::kRow, Scope::kBlock}) {
    for (uint64_t seed = 0; seed < 4; ++seed) {
      const int64_t rows = 40, cols = 96;
      at::Tensor h = RandomSpd(cols, 20 + seed, at::kDouble);
      at::manual_seed(30 + seed);
      at::Tensor pre = at::randn({rows, cols}, at::kDouble);
      at::Tensor ft = pre + 0.1 * at::randn({rows, cols}, at::kDouble);
      TailorOptions o = Options(true, scope);
      o.block_size = 32;
      auto r = TailorLayer("w", pre, ft, h, o);
      ASSERT_TRUE(r.ok()) << r.status();
      ASSERT_EQ(r->stats.compensation, "sequential");
      auto p = PrepareHessian(h, o);
      ASSERT_TRUE(p.ok());
      const double gemm = ReconstructionError(ft - pre, r->delta, p->h);
      EXPECT_NEAR(r->stats.error_compensated, gemm, 1e-9 * gemm)
          << "scope " << static_cast<int>(scope) << " seed " << seed;
      EXPECT_FALSE(r->stats.error_compensated_estimated);
      // 40 rows <= kErrorSampleRows: the mask-only value is exact too.
      EXPECT_FALSE(r->stats.error_mask_only_estimated);
      const double mask_only = ReconstructionError(
          ft - pre, at::where(r->mask, ft - pre, at::zeros({}, at::kDouble)),
          p->h);
      EXPECT_NEAR(r->stats.error_mask_only, mask_only, 1e-9 * mask_only);
    }
  }
}

TEST(KernelSpeedTest, MaskOnlyErrorIsASampledEstimateUnlessAskedExact) {
  const int64_t rows = 3 * kErrorSampleRows + 5, cols = 24;
  at::Tensor h = RandomSpd(cols, 41, at::kDouble);
  at::manual_seed(42);
  at::Tensor pre = at::randn({rows, cols}, at::kDouble);
  at::Tensor ft = pre + 0.1 * at::randn({rows, cols}, at::kDouble);
  TailorOptions o = Options(true);
  auto est = TailorLayer("w", pre, ft, h, o);
  ASSERT_TRUE(est.ok());
  EXPECT_TRUE(est->stats.error_mask_only_estimated);
  EXPECT_FALSE(est->stats.error_compensated_estimated);
  auto p = PrepareHessian(h, o);
  ASSERT_TRUE(p.ok());
  at::Tensor d0 = ft - pre;
  at::Tensor reverted = at::where(est->mask, at::zeros({}, at::kDouble), d0);
  // The estimate is the documented formula: evenly spaced rows, scaled.
  double sampled = 0;
  for (int64_t i = 0; i < kErrorSampleRows; ++i) {
    at::Tensor r = reverted[i * rows / kErrorSampleRows];
    sampled += r.matmul(p->h).dot(r).item<double>();
  }
  sampled *= static_cast<double>(rows) / kErrorSampleRows;
  EXPECT_NEAR(est->stats.error_mask_only, sampled, 1e-9 * sampled);
  o.exact_errors = true;
  auto exact = TailorLayer("w", pre, ft, h, o);
  ASSERT_TRUE(exact.ok());
  EXPECT_FALSE(exact->stats.error_mask_only_estimated);
  const double want = ReconstructionError(d0, d0 - reverted, p->h);
  EXPECT_NEAR(exact->stats.error_mask_only, want, 1e-9 * want);
  // Only the yardstick changed: same mask and delta.
  EXPECT_TRUE(exact->mask.equal(est->mask));
  EXPECT_TRUE(exact->delta.equal(est->delta));
  // Compensation "none": both values are the mask-only one, both flagged.
  o.exact_errors = false;
  o.compensation = Compensation::kNone;
  auto none = TailorLayer("w", pre, ft, h, o);
  ASSERT_TRUE(none.ok());
  EXPECT_EQ(none->stats.error_compensated, none->stats.error_mask_only);
  EXPECT_TRUE(none->stats.error_compensated_estimated);
}

// --- The preparation: one Cholesky + one triangular inverse. ---

TEST(KernelSpeedTest, PreparationMatchesSparseGptsRoute) {
  for (int64_t c : {int64_t{1}, int64_t{7}, int64_t{130}}) {
    at::Tensor h = RandomSpd(c, 50 + c, at::kDouble);
    if (c == 130) h.index_put_({5, 5}, 0.0);  // a dead input
    if (c == 130) h.index_put_({5}, at::zeros({c}, at::kDouble));
    if (c == 130) h.index_put_({Slice(), 5}, at::zeros({c}, at::kDouble));
    // SparseGPT's damping mean, over the fixed-up diagonal (the default,
    // dead_columns revert, takes it over the live one: tailor_kernel_test).
    TailorOptions o = Options(true);
    o.dead_columns = DeadColumns::kSelect;
    auto p = PrepareHessian(h, o);
    ASSERT_TRUE(p.ok()) << p.status();
    OldPrepared want = OldPrepare(h, 0.01);
    const double scale = want.u.abs().max().item<double>();
    EXPECT_LT((p->u - want.u).abs().max().item<double>(), 1e-10 * scale) << c;
    EXPECT_LT((p->hinv_diag - want.hinv_diag).abs().max().item<double>(),
              1e-10 * want.hinv_diag.abs().max().item<double>())
        << c;
    EXPECT_TRUE(p->h.equal(want.h));
    // U is upper triangular with a positive diagonal.
    EXPECT_TRUE(p->u.tril(-1).eq(0).all().item<bool>());
    EXPECT_TRUE(p->u.diagonal().gt(0).all().item<bool>());
    EXPECT_EQ(p->bytes(), (2 * c * c + c) * 8);
  }
}

// --- Item 2: one preparation per (task, key), freed after the last user.

TEST(PreparedHessianCacheTest, SharesOnePreparationAndFreesAfterLastUser) {
  PreparedHessianCache cache;
  const at::Tensor h = RandomSpd(16, 60, at::kFloat);
  int loads = 0;
  auto load = [&]() -> absl::StatusOr<at::Tensor> {
    ++loads;
    return h;
  };
  // Plan: q (0), k (1), o (2, own key), v (3) share "attn"; task 1 too.
  for (int64_t pos : {0, 1, 3}) cache.Expect(0, "attn", pos);
  cache.Expect(0, "o", 2);
  cache.Expect(1, "attn", 1);
  const TailorOptions o = Options(false);
  auto q = cache.Acquire(0, "attn", at::kCPU, load, o);
  ASSERT_TRUE(q.ok());
  auto k = cache.Acquire(0, "attn", at::kCPU, load, o);
  ASSERT_TRUE(k.ok());
  EXPECT_EQ(q->get(), k->get());  // the very same prepared Hessian
  EXPECT_EQ(cache.preparations(), 1);
  cache.Finished(0);  // q done; "attn" is still expected at 1 and 3
  auto k1 = cache.Acquire(1, "attn", at::kCPU, load, o);  // another task
  ASSERT_TRUE(k1.ok());
  EXPECT_EQ(cache.preparations(), 2);
  ASSERT_TRUE((*q)->ok());
  const int64_t one = (**q)->bytes();
  EXPECT_EQ(cache.LiveBytes(), 2 * one);
  cache.Finished(1);  // task 1's last user
  EXPECT_EQ(cache.LiveBytes(), one);
  auto ov = cache.Acquire(0, "o", at::kCPU, load, o);
  ASSERT_TRUE(ov.ok());
  cache.Finished(2);  // "o" done, "attn" still expected at 3
  EXPECT_EQ(cache.LiveBytes(), one);
  auto v = cache.Acquire(0, "attn", at::kCPU, load, o);
  ASSERT_TRUE(v.ok());
  EXPECT_EQ(v->get(), q->get());
  EXPECT_EQ(cache.preparations(), 3);
  EXPECT_EQ(loads, 3);
  cache.Finished(3);
  EXPECT_EQ(cache.LiveBytes(), 0);
  // The same output as preparing per tensor.
  auto direct = PrepareHessian(h, o);
  ASSERT_TRUE(direct.ok());
  EXPECT_TRUE((**v)->u.equal(direct->u));
}

// Issue #12: workers finish positions in any order and acquire at once.
TEST(PreparedHessianCacheTest, ConcurrentUsersPrepareOnceInAnyOrder) {
  PreparedHessianCache cache;
  const at::Tensor h = RandomSpd(16, 60, at::kFloat);
  std::atomic<int> loads{0};
  auto load = [&]() -> absl::StatusOr<at::Tensor> {
    ++loads;
    // Slow enough that the other threads ask while it prepares.
    std::this_thread::sleep_for(std::chrono::milliseconds(300));
    return h;
  };
  for (int64_t pos : {0, 1, 2, 3}) cache.Expect(0, "attn", pos);
  const TailorOptions o = Options(false);
  std::vector<PreparedHessianCache::Entry> got(4);
  std::vector<std::thread> threads;
  for (int i = 0; i < 4; ++i) {
    threads.emplace_back([&, i] {
      auto e = cache.Acquire(0, "attn", at::kCPU, load, o);
      if (e.ok()) got[i] = *e;
    });
  }
  for (std::thread& t : threads) t.join();
  EXPECT_EQ(loads.load(), 1);
  EXPECT_EQ(cache.preparations(), 1);
  for (int i = 0; i < 4; ++i) {
    ASSERT_NE(got[i], nullptr) << i;
    EXPECT_EQ(got[i].get(), got[0].get());
  }
  ASSERT_TRUE(got[0]->ok());
  // The last position finishing first frees nothing while others remain.
  cache.Finished(3);
  cache.Finished(0);
  cache.Finished(2);
  EXPECT_EQ(cache.LiveBytes(), (*got[0])->bytes());
  cache.Finished(1);
  EXPECT_EQ(cache.LiveBytes(), 0);
}

TEST(PreparedHessianCacheTest, CachesAFailedPreparationAndPassesLoadErrors) {
  PreparedHessianCache cache;
  cache.Expect(0, "bad", 0);
  cache.Expect(0, "bad", 1);
  cache.Expect(0, "missing", 2);
  const at::Tensor not_pd = -at::eye(4, at::kFloat);
  TailorOptions o = Options(false);
  auto a = cache.Acquire(
      0, "bad", at::kCPU, [&] { return not_pd; }, o);
  ASSERT_TRUE(a.ok());
  ASSERT_FALSE((*a)->ok());
  EXPECT_EQ((*a)->status().code(), absl::StatusCode::kFailedPrecondition);
  auto b = cache.Acquire(
      0, "bad", at::kCPU, [&] { return not_pd; }, o);
  ASSERT_TRUE(b.ok());
  EXPECT_EQ(a->get(), b->get());
  EXPECT_EQ(cache.preparations(), 1);
  // The kernel reports the cached failure as a fallback.
  at::Tensor pre = at::zeros({3, 4}), ft = at::ones({3, 4});
  auto r = TailorLayerPrepared("w", pre, ft, b->get(), o);
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->stats.compensation, "none");
  EXPECT_TRUE(r->stats.has_hessian);
  EXPECT_NE(r->stats.fallback_reason.find("not positive definite"),
            std::string::npos);
  // A load error fails the call and is not cached.
  auto m = cache.Acquire(
      0, "missing", at::kCPU,
      [] {
        return absl::StatusOr<at::Tensor>(absl::InvalidArgumentError("x"));
      },
      o);
  EXPECT_EQ(m.status().code(), absl::StatusCode::kInvalidArgument);
  // A prepared Hessian of the wrong size is refused with the tensor's name.
  auto small = cache.Acquire(
      0, "bad", at::kCPU, [&] { return not_pd; }, o);
  auto good = PrepareHessian(at::eye(5), o);
  ASSERT_TRUE(good.ok());
  absl::StatusOr<PreparedHessian> g = *good;
  auto wrong = TailorLayerPrepared("layer.w", pre, ft, &g, o);
  EXPECT_EQ(wrong.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(wrong.status().message().find("layer.w"), std::string::npos);
}

}  // namespace
}  // namespace tailor
