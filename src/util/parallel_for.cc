#include "util/parallel_for.h"

#include <algorithm>
#include <atomic>
#include <thread>
#include <vector>

namespace tailor {

void ParallelFor(size_t n, int workers,
                 const std::function<void(size_t)>& body) {
  std::atomic<size_t> next{0};
  auto worker = [&] {
    for (size_t i = next++; i < n; i = next++) body(i);
  };
  const int threads_wanted =
      std::max(1, static_cast<int>(std::min<size_t>(
                      static_cast<size_t>(std::max(workers, 1)), n)));
  std::vector<std::thread> threads;
  for (int w = 1; w < threads_wanted; ++w) threads.emplace_back(worker);
  worker();
  for (std::thread& t : threads) t.join();
}

}  // namespace tailor
