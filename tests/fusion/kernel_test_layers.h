#ifndef TAILOR_TESTS_FUSION_KERNEL_TEST_LAYERS_H_
#define TAILOR_TESTS_FUSION_KERNEL_TEST_LAYERS_H_

// The kernel tests' random layers and plain float64 matrices (for the
// references written with loops): tailor_kernel_test, authors_variant_test.

#include <ATen/ATen.h>

#include <cstdint>
#include <vector>

namespace tailor {

using Matrix = std::vector<std::vector<double>>;

inline Matrix ToMatrix(const at::Tensor& t) {
  at::Tensor c = t.to(at::kDouble).contiguous().cpu();
  Matrix m(c.size(0), std::vector<double>(c.size(1)));
  auto a = c.accessor<double, 2>();
  for (int64_t i = 0; i < c.size(0); ++i) {
    for (int64_t j = 0; j < c.size(1); ++j) m[i][j] = a[i][j];
  }
  return m;
}

// A layer with correlated inputs: H = (2/n) X^T X, X = Z A.
struct Layer {
  at::Tensor w_pre, w_ft, h;
};

inline Layer RandomLayer(int64_t rows, int64_t cols, int64_t samples,
                         uint64_t seed) {
  at::manual_seed(seed);
  at::Tensor mix =
      at::randn({cols, cols}, at::kDouble) * 0.5 + at::eye(cols, at::kDouble);
  at::Tensor x = at::randn({samples, cols}, at::kDouble).matmul(mix);
  Layer l;
  l.h = 2.0 / samples * x.t().matmul(x);
  l.w_pre = at::randn({rows, cols}, at::kDouble);
  l.w_ft = l.w_pre + 0.1 * at::randn({rows, cols}, at::kDouble);
  return l;
}

}  // namespace tailor

#endif  // TAILOR_TESTS_FUSION_KERNEL_TEST_LAYERS_H_
