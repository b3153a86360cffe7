#ifndef TAILOR_FUSION_TOP_K_H_
#define TAILOR_FUSION_TOP_K_H_

#include <ATen/core/Tensor.h>

#include <cstdint>

namespace tailor {

// Exact top-k selection without a sort (src/DESIGN.md §2.1: "exact k, ties to
// the lower index").
//
// The contract is that of a stable descending sort followed by taking the
// first k: every entry above the k-th largest value, plus, among the entries
// equal to it, the lowest-indexed ones until exactly k are kept. Values
// compare as ATen's sort compares them: NaN above everything (and equal to
// every NaN), -0 equal to +0. O(n): the k-th largest value is found by a
// radix select over an order-preserving integer image of the values (three
// 11-bit histogram passes for float, six for double), then one pass in index
// order writes the mask. The result never depends on the thread count.

// mask[i] = whether values[i] is among the top k of values[0, n). T is float
// or double; k is clamped to [0, n].
template <typename T>
void TopKMask(const T* values, int64_t n, int64_t k, bool* mask);

// Same, ranking |values[i]| (NaN stays NaN).
template <typename T>
void TopKAbsMask(const T* values, int64_t n, int64_t k, bool* mask);

// Tensor front ends, returning a bool tensor shaped like the input. CPU
// float32/float64 tensors take the radix select; anything else (CUDA,
// other dtypes) a stable sort, which yields the same mask.

// The k highest entries of the whole tensor (row-major flat order).
at::Tensor TopKMaskFlat(const at::Tensor& scores, int64_t k);
// The k highest entries of |values| over the whole tensor.
at::Tensor TopKAbsMaskFlat(const at::Tensor& values, int64_t k);
// The k highest entries of each row of a 2-D tensor.
at::Tensor TopKMaskRows(const at::Tensor& scores, int64_t k);

}  // namespace tailor

#endif  // TAILOR_FUSION_TOP_K_H_
