#ifndef TAILOR_FUSION_SPIDER_KERNEL_H_
#define TAILOR_FUSION_SPIDER_KERNEL_H_

#include <cstdint>

namespace tailor {

// SPIDER's arithmetic (merge_methods.h), element by element, shared by the
// whole-tensor Spider() and the streamed merge (streamed_merge.h) so that
// both give the same bits: every tensor-wide statistic (the means and
// population standard deviations of x = |W_pre| and of g = |D| or the
// importance, then the count and sum of the positive M) is accumulated in
// float64 in flat index order, and the elementwise steps (z-score, sigmoid,
// M = G / (G + I) where G > I, the rescale and cap) are computed in float64;
// the factor applied to D is then rounded to D's type. Values are fed in
// four passes, each over all n entries in index order:
//   1. AddMean(x, g)      2. AddDeviation(x, g)
//   3. AddM(x, g)         4. Factor(x, g) (and Positive) per entry.
// Inputs must be finite.
class SpiderKernel {
 public:
  explicit SpiderKernel(int64_t n) : n_(n) {}

  // Out of line (spider_kernel.cc, built without contraction into fused
  // multiply-adds) so that every caller rounds the same way.
  void AddMean(double x, double g);
  void EndMean();
  void AddDeviation(double x, double g);
  void EndDeviation();
  void AddM(double x, double g);
  void EndM();

  // After pass 3: the number of entries with M > 0 (the merged mask).
  int64_t count() const { return count_; }
  // Whether the entry is in the mask (M > 0).
  bool Positive(double x, double g) const { return M(x, g) > 0; }
  // The factor on D: min(M / mean of the positive M, 1), 0 off the mask.
  double Factor(double x, double g) const;
  // M = G / (G + I) where G > I, else 0; G, I the sigmoids of the z-scores.
  double M(double x, double g) const;

 private:
  int64_t n_;
  double sum_x_ = 0, sum_g_ = 0, mean_x_ = 0, mean_g_ = 0;
  double sq_x_ = 0, sq_g_ = 0, std_x_ = 0, std_g_ = 0;
  int64_t count_ = 0;
  double sum_m_ = 0, mean_m_ = 1;
};

}  // namespace tailor

#endif  // TAILOR_FUSION_SPIDER_KERNEL_H_
