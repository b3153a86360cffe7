#include "fusion/top_k_window.h"

#include <algorithm>
#include <cmath>

namespace tailor {

template <typename T>
std::vector<std::pair<int64_t, int64_t>> TopKWindow<T>::SampleBlocks(
    int64_t n, int64_t chunk) {
  std::vector<std::pair<int64_t, int64_t>> out;
  if (n <= 0) return out;
  const int64_t block = std::max<int64_t>(1, std::min(kSampleBlock, chunk));
  const int64_t tiles = (n + block - 1) / block;
  const int64_t blocks =
      std::min(tiles, std::max<int64_t>(1, kSampleKeys / block));
  for (int64_t b = 0; b < blocks; ++b) {
    const int64_t off = blocks == tiles ? b * block
                        : blocks == 1   ? 0
                                        : (n - block) * b / (blocks - 1);
    out.emplace_back(off, std::min(block, n - off));
  }
  return out;
}

template <typename T>
TopKWindow<T>::TopKWindow(std::vector<Key> sample, int64_t n, int64_t k,
                          int64_t max_candidates)
    : n_(n), k_(k), max_candidates_(max_candidates) {
  const int64_t s = static_cast<int64_t>(sample.size());
  if (k <= 0 || k >= n || s == 0 || max_candidates <= 0) return;
  // The k-th largest of n sits near rank q s of the sample (0-based, from
  // the top); its sample rank has a standard deviation of sqrt(s q (1-q)).
  const double q = static_cast<double>(k) / static_cast<double>(n);
  const double center = q * static_cast<double>(s);
  const double margin = 4.5 * std::sqrt(static_cast<double>(s) * q * (1 - q)) +
                        8.0 + static_cast<double>(s) / 4096.0;
  const int64_t top = static_cast<int64_t>(std::floor(center - margin));
  const int64_t bottom = static_cast<int64_t>(std::ceil(center + margin));
  // The sample's keys of ranks `top` and `bottom` in descending order (what
  // a sort would put there), by two selections instead of a sort.
  hi_ = ~Key{0};
  auto from = sample.begin();
  if (top > 0) {
    std::nth_element(sample.begin(), sample.begin() + top, sample.end(),
                     std::greater<Key>());
    hi_ = sample[top];
    from = sample.begin() + top;
  }
  lo_ = Key{0};
  if (bottom < s - 1) {
    std::nth_element(from, sample.begin() + bottom, sample.end(),
                     std::greater<Key>());
    lo_ = sample[bottom];
  }
  // The sample's share of the window, scaled to the tensor.
  int64_t in_window = 0;
  for (const Key key : sample) in_window += key >= lo_ && key <= hi_;
  const double inside = static_cast<double>(in_window) /
                        static_cast<double>(s) * static_cast<double>(n);
  if (inside > 0.75 * static_cast<double>(max_candidates)) return;
  enabled_ = true;
  candidates_.reset(new Key[static_cast<size_t>(max_candidates)]);
}

template <typename T>
bool TopKWindow<T>::Resolve(const std::function<Key(Key)>& f, Key* threshold,
                            int64_t* ties) {
  std::unique_ptr<Key[]> held = std::move(candidates_);
  if (!enabled_ || overflow_) return false;
  const int64_t count = count_;
  Key* c = held.get();
  const int64_t need = k_ - above_;  // the k-th's rank among the candidates
  if (need <= 0 || need > count) return false;
  std::nth_element(c, c + (need - 1), c + count, std::greater<Key>());
  const Key t = f(c[need - 1]);
  // Every key above the window must map above t, every key below it below
  // t, so that the candidates hold all the keys f maps to t. The nearest
  // possible keys outside the window are hi_ + 1 and lo_ - 1 (finite values:
  // a key above hi_ exists only when hi_ + 1 is finite, one below lo_ only
  // when lo_ - 1 >= +0).
  if (above_ > 0 && !(f(hi_ + 1) > t)) return false;
  if (n_ - above_ - count > 0 && !(f(lo_ - 1) < t)) return false;
  int64_t greater = above_;
  for (int64_t i = 0; i < count; ++i) greater += f(c[i]) > t;
  *threshold = t;
  *ties = k_ - greater;
  return *ties >= 1;
}

template class TopKWindow<float>;
template class TopKWindow<double>;

}  // namespace tailor
