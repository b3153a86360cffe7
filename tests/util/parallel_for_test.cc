#include "util/parallel_for.h"

#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <set>
#include <thread>
#include <vector>

#include "absl/synchronization/mutex.h"

namespace tailor {
namespace {

TEST(ParallelForTest, RunsEveryIndexOnce) {
  for (int workers : {0, 1, 2, 5, 64}) {
    for (size_t n : {size_t{0}, size_t{1}, size_t{3}, size_t{100}}) {
      std::vector<std::atomic<int>> calls(n);
      for (auto& c : calls) c = 0;
      ParallelFor(n, workers, [&](size_t i) { ++calls[i]; });
      for (size_t i = 0; i < n; ++i) {
        EXPECT_EQ(calls[i].load(), 1) << "workers " << workers << " i " << i;
      }
    }
  }
}

TEST(ParallelForTest, OneWorkerRunsInOrderOnTheCallingThread) {
  std::vector<size_t> order;
  const std::thread::id caller = std::this_thread::get_id();
  bool same_thread = true;
  ParallelFor(6, 1, [&](size_t i) {
    order.push_back(i);
    same_thread = same_thread && std::this_thread::get_id() == caller;
  });
  EXPECT_EQ(order, (std::vector<size_t>{0, 1, 2, 3, 4, 5}));
  EXPECT_TRUE(same_thread);
}

TEST(ParallelForTest, UsesAtMostMinOfWorkersAndItems) {
  absl::Mutex mu;
  std::set<std::thread::id> threads;
  // Items wait for each other a little, so that the threads overlap.
  ParallelFor(3, 8, [&](size_t) {
    {
      absl::MutexLock lock(&mu);
      threads.insert(std::this_thread::get_id());
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  });
  EXPECT_GE(threads.size(), 1u);
  EXPECT_LE(threads.size(), 3u);
}

}  // namespace
}  // namespace tailor
