#include "fusion/spider_kernel.h"

#include <cmath>

namespace tailor {
namespace {

// sigmoid of the population z-score; a constant input (std 0) maps to
// sigmoid(0) = 0.5.
double SigmoidZ(double v, double mean, double std) {
  const double z = std > 0 ? (v - mean) / std : 0.0;
  return 1.0 / (1.0 + std::exp(-z));
}

}  // namespace

void SpiderKernel::AddMean(double x, double g) {
  sum_x_ += x;
  sum_g_ += g;
}

void SpiderKernel::AddDeviation(double x, double g) {
  const double dx = x - mean_x_, dg = g - mean_g_;
  sq_x_ += dx * dx;
  sq_g_ += dg * dg;
}

void SpiderKernel::AddM(double x, double g) {
  const double m = M(x, g);
  if (m > 0) {
    ++count_;
    sum_m_ += m;
  }
}

double SpiderKernel::Factor(double x, double g) const {
  const double m = M(x, g);
  if (!(m > 0)) return 0.0;
  const double r = m / mean_m_;
  return r < 1.0 ? r : 1.0;
}

void SpiderKernel::EndMean() {
  const double n = static_cast<double>(n_ > 0 ? n_ : 1);
  mean_x_ = sum_x_ / n;
  mean_g_ = sum_g_ / n;
}

void SpiderKernel::EndDeviation() {
  const double n = static_cast<double>(n_ > 0 ? n_ : 1);
  std_x_ = std::sqrt(sq_x_ / n);
  std_g_ = std::sqrt(sq_g_ / n);
}

void SpiderKernel::EndM() {
  if (count_ > 0) mean_m_ = sum_m_ / static_cast<double>(count_);
}

double SpiderKernel::M(double x, double g) const {
  const double i = SigmoidZ(x, mean_x_, std_x_);
  const double gs = SigmoidZ(g, mean_g_, std_g_);
  return gs > i ? gs / (gs + i) : 0.0;
}

}  // namespace tailor
