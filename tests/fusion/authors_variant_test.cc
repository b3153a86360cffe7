// Variant authors-code (issue #19 point 5, fusion/authors_variant.h) against
// a float64 brute-force reference of the authors' released loop written
// here from their code's description (github.com/didizhu-zju/Model-Tailor,
// llava/train/sparsegpt.py, fasterprune): in weight space as they write it
// (W the fine-tuned weights, reverted entries set to the pre-trained ones),
// with U from SparseGPT's cholesky -> cholesky_inverse -> cholesky, sorted
// thresholds and plain loops; none of the kernel's code paths.

#include "fusion/authors_variant.h"

#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <vector>

#include "absl/strings/match.h"
#include "fusion/tailor_kernel.h"
#include "kernel_test_layers.h"

namespace tailor {
namespace {

Layer CorrelatedLayer(int64_t rows, int64_t cols, uint64_t seed) {
  return RandomLayer(rows, cols, 3 * cols, seed);
}

// Their preparation: dead H_jj = 1, H += 0.01 mean(diag H) I, U = upper
// Cholesky factor of H^-1.
Matrix TheirU(const at::Tensor& h_in, double percdamp) {
  at::Tensor h = h_in.clone();
  const int64_t c = h.size(0);
  for (int64_t j = 0; j < c; ++j) {
    if (h[j][j].item<double>() == 0) h.index_put_({j, j}, 1.0);
  }
  const double damp = percdamp * h.diagonal().mean().item<double>();
  h.diagonal().add_(damp);
  at::Tensor l = at::linalg_cholesky(h);
  at::Tensor hinv = at::cholesky_inverse(l);
  return ToMatrix(at::linalg_cholesky(hinv, /*upper=*/true));
}

// z-score of one row, torch.std's divisor n - 1.
std::vector<double> ZRow(const std::vector<double>& x) {
  const double n = static_cast<double>(x.size());
  double mean = 0;
  for (double v : x) mean += v;
  mean /= n;
  double ss = 0;
  for (double v : x) ss += (v - mean) * (v - mean);
  const double sd = std::sqrt(ss / (n - 1));
  std::vector<double> z;
  for (double v : x) z.push_back((v - mean) / sd);
  return z;
}

struct RefResult {
  Matrix delta;  // fused - pre-trained
  std::vector<std::vector<bool>> kept;
  std::vector<int64_t> reverted;  // per block
};

// Their fasterprune, sparsity = 1 - rho, with the + sign.
RefResult TheirLoop(const Layer& l, double rho, double omega, int64_t bs) {
  Matrix w = ToMatrix(l.w_ft);
  const Matrix p = ToMatrix(l.w_pre);
  const Matrix u = TheirU(l.h, 0.01);
  const size_t rows = w.size(), cols = w[0].size();
  Matrix changes(rows, std::vector<double>(cols));
  for (size_t r = 0; r < rows; ++r) {
    for (size_t j = 0; j < cols; ++j)
      changes[r][j] = std::abs(w[r][j] - p[r][j]);
  }
  RefResult out;
  out.kept.assign(rows, std::vector<bool>(cols, true));
  const double sparsity = 1.0 - rho;
  for (size_t i1 = 0; i1 < cols; i1 += bs) {
    const size_t i2 = std::min(cols, i1 + bs), count = i2 - i1;
    // importance = omega z(changes) + (1 - omega) z(W1^2 / U_jj^2), per row.
    Matrix score(rows);
    std::vector<double> flat;
    for (size_t r = 0; r < rows; ++r) {
      std::vector<double> a, b;
      for (size_t j = i1; j < i2; ++j) {
        a.push_back(changes[r][j]);
        b.push_back(w[r][j] * w[r][j] / (u[j][j] * u[j][j]));
      }
      a = ZRow(a);
      b = ZRow(b);
      for (size_t j = 0; j < count; ++j) {
        score[r].push_back(omega * a[j] + (1 - omega) * b[j]);
        flat.push_back(score[r][j]);
      }
    }
    std::vector<double> sorted = flat;
    std::sort(sorted.begin(), sorted.end());
    const double thresh = sorted[static_cast<size_t>(
        static_cast<double>(flat.size()) * sparsity)];
    int64_t reverted = 0;
    Matrix w1(rows), err(rows, std::vector<double>(count));
    for (size_t r = 0; r < rows; ++r) {
      w1[r].assign(w[r].begin() + i1, w[r].begin() + i2);
    }
    std::vector<std::vector<bool>> revert(rows, std::vector<bool>(count));
    for (size_t r = 0; r < rows; ++r) {
      for (size_t j = 0; j < count; ++j) {
        revert[r][j] = score[r][j] <= thresh;
        reverted += revert[r][j];
        out.kept[r][i1 + j] = !revert[r][j];
      }
    }
    out.reverted.push_back(reverted);
    Matrix q(rows, std::vector<double>(count));
    for (size_t i = 0; i < count; ++i) {
      const double d = u[i1 + i][i1 + i];
      for (size_t r = 0; r < rows; ++r) {
        const double wv = w1[r][i];
        q[r][i] = revert[r][i] ? p[r][i1 + i] : wv;
        const double e = (wv - q[r][i]) / d;
        for (size_t j = i; j < count; ++j) w1[r][j] += e * u[i1 + i][i1 + j];
        err[r][i] = e;
      }
    }
    for (size_t r = 0; r < rows; ++r) {
      for (size_t i = 0; i < count; ++i) w[r][i1 + i] = q[r][i];
      for (size_t j = i2; j < cols; ++j) {
        double s = 0;
        for (size_t i = 0; i < count; ++i) s += err[r][i] * u[i1 + i][j];
        w[r][j] += s;
      }
    }
  }
  out.delta = w;
  for (size_t r = 0; r < rows; ++r) {
    for (size_t j = 0; j < cols; ++j) out.delta[r][j] -= p[r][j];
  }
  return out;
}

// The kernel's mask is theirs exactly; its delta theirs to 1e-6 of the
// largest |delta|, and exactly 0 where reverted.
void ExpectSameAsTheirs(const LayerResult& r, const RefResult& ref) {
  double scale = 0;
  for (const auto& row : ref.delta) {
    for (double v : row) scale = std::max(scale, std::abs(v));
  }
  const Matrix got = ToMatrix(r.delta);
  auto m = r.mask.accessor<bool, 2>();
  for (size_t i = 0; i < got.size(); ++i) {
    for (size_t j = 0; j < got[0].size(); ++j) {
      ASSERT_EQ(static_cast<bool>(m[i][j]), ref.kept[i][j]) << i << "," << j;
      ASSERT_NEAR(got[i][j], ref.delta[i][j], 1e-6 * scale) << i << "," << j;
      if (!m[i][j]) {
        ASSERT_EQ(got[i][j], 0.0) << i << "," << j;
      }
    }
  }
}

TailorOptions Variant64(double rho, int64_t block) {
  TailorOptions o;
  o.variant = Variant::kAuthorsCode;
  ApplyVariantDefaults([](absl::string_view) { return false; }, &o);
  o.keep_ratio = rho;
  o.block_size = block;
  o.float64 = true;
  o.exact_errors = true;
  return o;
}

TEST(AuthorsVariantTest, RevertCountIsTheirThresholdRule) {
  // int(n (1 - rho)) + 1, never round(rho n)'s complement.
  EXPECT_EQ(AuthorsCodeRevertCount(0.1, 1280), 1153);  // keeps 127, not 128
  EXPECT_EQ(AuthorsCodeRevertCount(0.3, 10), 8);       // keeps 2, not 3
  EXPECT_EQ(AuthorsCodeRevertCount(0.5, 7), 4);        // int(3.5) + 1
  EXPECT_EQ(AuthorsCodeRevertCount(1.0, 50), 1);       // one even at rho = 1
  EXPECT_EQ(AuthorsCodeRevertCount(0.01, 5), 5);       // at most n
  EXPECT_EQ(AuthorsCodeRevertCount(0.1, 0), 0);
}

// The variant == their loop in float64 (to ~1e-6 relative), with the exact
// mask their threshold gives, over shapes with full and partial last blocks.
TEST(AuthorsVariantTest, MatchesTheirLoopInFloat64) {
  struct Case {
    int64_t rows, cols, block;
    double rho;
    uint64_t seed;
  };
  const Case cases[] = {
      {8, 40, 16, 0.1, 1},     // blocks 16, 16, 8
      {5, 33, 128, 0.3, 2},    // one partial block
      {12, 300, 128, 0.1, 3},  // 128, 128, 44
      {6, 50, 20, 0.5, 4},     // 20, 20, 10
      {3, 24, 8, 1.0, 5},      // rho = 1: one entry per block reverted
      {1, 64, 32, 0.2, 6},     // one row
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(testing::Message() << c.rows << "x" << c.cols << " block "
                                    << c.block << " rho " << c.rho);
    const Layer l = CorrelatedLayer(c.rows, c.cols, c.seed);
    const TailorOptions o = Variant64(c.rho, c.block);
    absl::StatusOr<LayerResult> r = TailorLayer("w", l.w_pre, l.w_ft, l.h, o);
    ASSERT_TRUE(r.ok()) << r.status();
    const RefResult ref = TheirLoop(l, c.rho, 0.8, c.block);
    EXPECT_EQ(r->stats.compensation, "authors-code");
    // Exact counts per block: their rule, not round(rho n).
    auto m = r->mask.accessor<bool, 2>();
    int64_t expected_kept = 0;
    for (int64_t b = 0, i1 = 0; i1 < c.cols; ++b, i1 += c.block) {
      const int64_t width = std::min(c.block, c.cols - i1);
      const int64_t n = c.rows * width;
      const int64_t reverted =
          static_cast<int64_t>(static_cast<double>(n) * (1.0 - c.rho)) + 1;
      EXPECT_EQ(ref.reverted[b], std::min(reverted, n));
      int64_t kept = 0;
      for (int64_t i = 0; i < c.rows; ++i) {
        for (int64_t j = i1; j < i1 + width; ++j) kept += m[i][j];
      }
      EXPECT_EQ(kept, n - std::min(reverted, n)) << "block " << b;
      expected_kept += n - std::min(reverted, n);
    }
    EXPECT_EQ(r->stats.kept, expected_kept);
    ExpectSameAsTheirs(*r, ref);
  }
}

// The float32 kernel: the same counts and close to the float64 result.
TEST(AuthorsVariantTest, Float32AgreesWithFloat64) {
  const Layer l = CorrelatedLayer(16, 96, 11);
  TailorOptions o = Variant64(0.2, 32);
  auto r64 = TailorLayer("w", l.w_pre, l.w_ft, l.h, o);
  o.float64 = false;
  auto r32 = TailorLayer("w", l.w_pre.to(at::kFloat), l.w_ft.to(at::kFloat),
                         l.h.to(at::kFloat), o);
  ASSERT_TRUE(r64.ok() && r32.ok());
  EXPECT_EQ(r32->stats.kept, r64->stats.kept);
  // A mask may differ near a threshold; most entries agree.
  const double same =
      r32->mask.eq(r64->mask).to(at::kDouble).mean().item<double>();
  EXPECT_GT(same, 0.97);
  EXPECT_EQ(r32->delta.scalar_type(), at::kFloat);
}

// The sign. E(compensated) / E(mask only) with their mask, on random
// correlated layers (seeds 21-24, rho 0.1 and 0.5, 16 x 128 and 24 x 200,
// block 64, float64), measured here when this test was written:
//   their + sign:                          2.10 to 3.71 (always > 1);
//   the paper's - sign with the same mask: 0.79 to 0.99 (always < 1).
// (The issue measured 1.16-2.23 and 0.32-0.91 on its own layers.) The test
// prints the range it sees.
TEST(AuthorsVariantTest, TheirSignRaisesTheError) {
  double lo_plus = 1e300, hi_plus = 0, lo_minus = 1e300, hi_minus = 0;
  for (uint64_t seed : {21, 22, 23, 24}) {
    for (double rho : {0.1, 0.5}) {
      for (auto [rows, cols] : {std::pair<int64_t, int64_t>{16, 128},
                                std::pair<int64_t, int64_t>{24, 200}}) {
        const Layer l = CorrelatedLayer(rows, cols, seed);
        const TailorOptions o = Variant64(rho, 64);
        auto r = TailorLayer("w", l.w_pre, l.w_ft, l.h, o);
        ASSERT_TRUE(r.ok()) << r.status();
        const double mask_only = r->stats.error_mask_only;
        ASSERT_GT(mask_only, 0);
        EXPECT_FALSE(r->stats.error_mask_only_estimated);
        const double plus = r->stats.error_compensated / mask_only;
        // The paper's sign with the same mask (CompensateSequential's
        // ||Err||^2 is E for it).
        auto prepared = PrepareHessian(l.h, o);
        ASSERT_TRUE(prepared.ok());
        double minus_e = 0;
        CompensateSequential(l.w_ft - l.w_pre, r->mask, prepared->u, 64,
                             &minus_e);
        const double minus = minus_e / mask_only;
        EXPECT_GT(plus, 1) << "seed " << seed << " rho " << rho;
        EXPECT_LT(minus, 1) << "seed " << seed << " rho " << rho;
        lo_plus = std::min(lo_plus, plus);
        hi_plus = std::max(hi_plus, plus);
        lo_minus = std::min(lo_minus, minus);
        hi_minus = std::max(hi_minus, minus);
      }
    }
  }
  std::printf("E(+)/E(mask only) %.2f-%.2f, E(-)/E(mask only) %.2f-%.2f\n",
              lo_plus, hi_plus, lo_minus, hi_minus);
}

// A one-column last block: torch.std of one value is NaN in their code;
// here its scores are 0 and exactly their count is reverted, the lower
// rows kept.
TEST(AuthorsVariantTest, OneColumnBlockRevertsExactlyTheCount) {
  const Layer l = CorrelatedLayer(6, 17, 31);
  auto r = TailorLayer("w", l.w_pre, l.w_ft, l.h, Variant64(0.5, 8));
  ASSERT_TRUE(r.ok()) << r.status();
  // Block [16, 17): n = 6, int(3) + 1 = 4 reverted, rows 0 and 1 kept.
  at::Tensor last = r->mask.select(1, 16);
  EXPECT_EQ(last.sum().item<int64_t>(), 2);
  EXPECT_TRUE(last[0].item<bool>());
  EXPECT_TRUE(last[1].item<bool>());
  EXPECT_TRUE(at::isfinite(r->delta).all().item<bool>());
}

TEST(AuthorsVariantTest, TensorsWithoutHessianAndBadOptions) {
  // No Hessian (a bias, an uncalibrated layer): salience only, as for the
  // paper's variant; no error.
  const Layer l = CorrelatedLayer(4, 20, 41);
  TailorOptions o = Variant64(0.3, 8);
  auto bias = TailorLayer("b", l.w_pre.select(0, 0), l.w_ft.select(0, 0),
                          at::Tensor(), o);
  ASSERT_TRUE(bias.ok()) << bias.status();
  EXPECT_EQ(bias->stats.compensation, "none");
  // Options its code does not have: INVALID_ARGUMENT naming the knob.
  o.compensation = Compensation::kExact;
  auto bad = TailorLayer("w", l.w_pre, l.w_ft, l.h, o);
  ASSERT_FALSE(bad.ok());
  EXPECT_TRUE(absl::StrContains(
      bad.status().message(),
      "w: compensation must be sequential with variant authors-code"))
      << bad.status();
  o = Variant64(0.3, 8);
  o.dead_columns = DeadColumns::kRevert;
  bad = TailorLayer("w", l.w_pre, l.w_ft, l.h, o);
  ASSERT_FALSE(bad.ok());
  EXPECT_TRUE(absl::StrContains(bad.status().message(), "dead_columns"))
      << bad.status();
}

// Dead inputs compete as in their code (H_jj = 1): the reference above,
// which fixes them the same way, still matches.
TEST(AuthorsVariantTest, DeadColumnsFollowTheirFixUp) {
  Layer l = CorrelatedLayer(6, 24, 51);
  for (int64_t j : {3, 10}) {
    l.h.select(0, j).zero_();
    l.h.select(1, j).zero_();
  }
  auto r = TailorLayer("w", l.w_pre, l.w_ft, l.h, Variant64(0.3, 8));
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->stats.dead_columns, 2);
  EXPECT_EQ(r->stats.dead_entries_reverted, 0);
  ExpectSameAsTheirs(*r, TheirLoop(l, 0.3, 0.8, 8));
}

}  // namespace
}  // namespace tailor
