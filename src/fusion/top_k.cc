#include "fusion/top_k.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstring>
#include <type_traits>
#include <vector>

namespace tailor {
namespace {

using at::indexing::Slice;

template <typename T>
using KeyOf = std::conditional_t<sizeof(T) == 4, uint32_t, uint64_t>;

// An unsigned integer image of x whose order is the sort's order: NaN maps
// to the largest key, -0 and +0 to the same key.
template <typename T>
inline KeyOf<T> OrderKey(T x) {
  using K = KeyOf<T>;
  constexpr K kSign = K{1} << (8 * sizeof(K) - 1);
  if (std::isnan(x)) return ~K{0};
  x = x + T(0);  // -0 + 0 = +0 (not folded: no -ffast-math)
  K bits;
  std::memcpy(&bits, &x, sizeof(bits));
  return (bits & kSign) ? ~bits : (bits | kSign);
}

template <typename T, bool kAbs>
inline KeyOf<T> KeyAt(const T* v, int64_t i) {
  return OrderKey<T>(kAbs ? std::fabs(v[i]) : v[i]);
}

template <typename T, bool kAbs>
void SelectImpl(const T* v, int64_t n, int64_t k, bool* mask) {
  using K = KeyOf<T>;
  k = std::clamp<int64_t>(k, 0, n);
  if (k == 0 || k == n) {
    std::fill(mask, mask + n, k == n);
    return;
  }
  constexpr int kBits = 11;
  constexpr int kKeyBits = 8 * sizeof(K);
  constexpr size_t kBuckets = size_t{1} << kBits;
  // Radix select, most significant digit first: after each pass the k-th
  // largest key's top bits are known (`prefix` under `known`), and
  // `remaining` is its rank among the keys sharing them.
  K prefix = 0, known = 0;
  int64_t remaining = k;
  std::array<int64_t, kBuckets> hist;
  for (int top = kKeyBits; top > 0; top -= kBits) {
    const int width = std::min(kBits, top);
    const int shift = top - width;
    const K digit_mask = (K{1} << width) - 1;
    hist.fill(0);
    if (known == 0) {
      for (int64_t i = 0; i < n; ++i) {
        ++hist[(KeyAt<T, kAbs>(v, i) >> shift) & digit_mask];
      }
    } else {
      for (int64_t i = 0; i < n; ++i) {
        const K key = KeyAt<T, kAbs>(v, i);
        if ((key & known) == prefix) ++hist[(key >> shift) & digit_mask];
      }
    }
    K d = digit_mask;
    for (;; --d) {
      if (hist[d] >= remaining) break;
      remaining -= hist[d];
    }
    prefix |= d << shift;
    known |= digit_mask << shift;
  }
  // prefix is the k-th largest key; `remaining` of the keys equal to it are
  // kept, the lowest-indexed ones.
  const K t = prefix;
  for (int64_t i = 0; i < n; ++i) {
    const K key = KeyAt<T, kAbs>(v, i);
    bool keep = key > t;
    if (key == t && remaining > 0) {
      keep = true;
      --remaining;
    }
    mask[i] = keep;
  }
}

bool RadixEligible(const at::Tensor& t) {
  return t.device().is_cpu() &&
         (t.scalar_type() == at::kFloat || t.scalar_type() == at::kDouble);
}

// The sort-based definition, for the tensors the radix path does not take.
at::Tensor SortRows(const at::Tensor& scores, int64_t k) {
  at::Tensor mask =
      at::zeros(scores.sizes(), scores.options().dtype(at::kBool));
  k = std::clamp<int64_t>(k, 0, scores.size(1));
  if (k <= 0) return mask;
  at::Tensor order =
      std::get<1>(scores.sort(/*stable=*/true, /*dim=*/1, /*descending=*/true));
  mask.scatter_(1, order.index({Slice(), Slice(0, k)}), true);
  return mask;
}

template <bool kAbs>
void SelectFlat(const at::Tensor& c, int64_t k, bool* out) {
  if (c.scalar_type() == at::kFloat) {
    SelectImpl<float, kAbs>(c.data_ptr<float>(), c.numel(), k, out);
  } else {
    SelectImpl<double, kAbs>(c.data_ptr<double>(), c.numel(), k, out);
  }
}

}  // namespace

template <typename T>
void TopKMask(const T* values, int64_t n, int64_t k, bool* mask) {
  SelectImpl<T, false>(values, n, k, mask);
}
template <typename T>
void TopKAbsMask(const T* values, int64_t n, int64_t k, bool* mask) {
  SelectImpl<T, true>(values, n, k, mask);
}
template void TopKMask<float>(const float*, int64_t, int64_t, bool*);
template void TopKMask<double>(const double*, int64_t, int64_t, bool*);
template void TopKAbsMask<float>(const float*, int64_t, int64_t, bool*);
template void TopKAbsMask<double>(const double*, int64_t, int64_t, bool*);

at::Tensor TopKMaskFlat(const at::Tensor& scores, int64_t k) {
  if (!RadixEligible(scores)) {
    return SortRows(scores.reshape({1, -1}), k).view(scores.sizes());
  }
  const at::Tensor c = scores.contiguous();
  at::Tensor mask = at::empty(scores.sizes(), c.options().dtype(at::kBool));
  SelectFlat<false>(c, k, mask.data_ptr<bool>());
  return mask;
}

at::Tensor TopKAbsMaskFlat(const at::Tensor& values, int64_t k) {
  if (!RadixEligible(values)) {
    return SortRows(values.abs().reshape({1, -1}), k).view(values.sizes());
  }
  const at::Tensor c = values.contiguous();
  at::Tensor mask = at::empty(values.sizes(), c.options().dtype(at::kBool));
  SelectFlat<true>(c, k, mask.data_ptr<bool>());
  return mask;
}

at::Tensor TopKMaskRows(const at::Tensor& scores, int64_t k) {
  if (!RadixEligible(scores)) return SortRows(scores, k);
  const at::Tensor c = scores.contiguous();
  at::Tensor mask = at::empty(scores.sizes(), c.options().dtype(at::kBool));
  const int64_t rows = c.size(0), cols = c.size(1);
  bool* out = mask.data_ptr<bool>();
  for (int64_t r = 0; r < rows; ++r) {
    if (c.scalar_type() == at::kFloat) {
      SelectImpl<float, false>(c.data_ptr<float>() + r * cols, cols, k,
                               out + r * cols);
    } else {
      SelectImpl<double, false>(c.data_ptr<double>() + r * cols, cols, k,
                                out + r * cols);
    }
  }
  return mask;
}

}  // namespace tailor
