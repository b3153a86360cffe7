// The job executor (fusion/job_executor.h): ordered commits whatever the
// completion order, the memory budget, errors and cancellation. Torch-free.

#include "fusion/job_executor.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <mutex>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"

namespace tailor {
namespace {

std::vector<ExecutorItem> Items(int n, int64_t bytes = 1) {
  std::vector<ExecutorItem> items(n);
  for (int i = 0; i < n; ++i) {
    items[i].cost = i;  // the last items are the costliest
    items[i].bytes = bytes;
    items[i].result_bytes = bytes;
  }
  return items;
}

TEST(JobExecutor, CommitsInIndexOrderWhateverTheCompletionOrder) {
  for (int workers : {1, 2, 4}) {
    const std::vector<ExecutorItem> items = Items(12);
    std::mutex mu;
    std::vector<size_t> computed, committed;
    ExecutorOptions options;
    options.workers = workers;
    absl::Status s = RunOrdered(
        items, options,
        [&](size_t i) {
          // Early items are slow: later ones complete first.
          absl::SleepFor(absl::Milliseconds(i < 3 ? 60 : 1));
          std::lock_guard<std::mutex> lock(mu);
          computed.push_back(i);
          return absl::OkStatus();
        },
        [&](size_t i) {
          std::lock_guard<std::mutex> lock(mu);
          // Computed before it is committed.
          EXPECT_NE(std::find(computed.begin(), computed.end(), i),
                    computed.end());
          committed.push_back(i);
          return absl::OkStatus();
        });
    ASSERT_TRUE(s.ok()) << s;
    ASSERT_EQ(committed.size(), items.size());
    for (size_t i = 0; i < committed.size(); ++i) {
      EXPECT_EQ(committed[i], i) << "workers " << workers;
    }
    EXPECT_EQ(computed.size(), items.size());
  }
}

TEST(JobExecutor, ItemsRunConcurrentlyCostliestFirst) {
  const std::vector<ExecutorItem> items = Items(4);
  std::atomic<int> running{0}, peak{0};
  std::mutex mu;
  std::vector<size_t> started;
  ExecutorOptions options;
  options.workers = 2;
  absl::Status s = RunOrdered(
      items, options,
      [&](size_t i) {
        {
          std::lock_guard<std::mutex> lock(mu);
          started.push_back(i);
        }
        const int now = ++running;
        int p = peak.load();
        while (now > p && !peak.compare_exchange_weak(p, now)) {
        }
        // Long enough for the other worker to start one, on a loaded box.
        const auto until =
            std::chrono::steady_clock::now() + std::chrono::seconds(5);
        while (peak.load() < 2 && std::chrono::steady_clock::now() < until) {
          absl::SleepFor(absl::Milliseconds(5));
        }
        --running;
        return absl::OkStatus();
      },
      [](size_t) { return absl::OkStatus(); });
  ASSERT_TRUE(s.ok()) << s;
  EXPECT_EQ(peak.load(), 2);
  // Item 0 (the next to commit) starts at once; the other worker takes the
  // costliest, item 3.
  ASSERT_GE(started.size(), 2u);
  std::vector<size_t> first(started.begin(), started.begin() + 2);
  std::sort(first.begin(), first.end());
  EXPECT_EQ(first, (std::vector<size_t>{0, 3}));
}

TEST(JobExecutor, BudgetAlwaysAdmitsTheNextItemInOrder) {
  // Every item is larger than the whole budget: they run one at a time, in
  // order, and the run completes (no deadlock).
  const std::vector<ExecutorItem> items = Items(5, /*bytes=*/100);
  std::atomic<int> running{0}, peak{0};
  std::vector<size_t> order;
  std::mutex mu;
  ExecutorOptions options;
  options.workers = 4;
  options.memory_budget = 10;
  absl::Status s = RunOrdered(
      items, options,
      [&](size_t i) {
        const int now = ++running;
        int p = peak.load();
        while (now > p && !peak.compare_exchange_weak(p, now)) {
        }
        {
          std::lock_guard<std::mutex> lock(mu);
          order.push_back(i);
        }
        absl::SleepFor(absl::Milliseconds(20));
        --running;
        return absl::OkStatus();
      },
      [](size_t) { return absl::OkStatus(); });
  ASSERT_TRUE(s.ok()) << s;
  EXPECT_EQ(peak.load(), 1);
  EXPECT_EQ(order, (std::vector<size_t>{0, 1, 2, 3, 4}));
}

TEST(JobExecutor, BudgetBoundsComputingAndUncommittedItems) {
  // Budget 3 items of 1 byte: at most 3 started-but-uncommitted at once,
  // even while item 0 is slow and the others finish early.
  const std::vector<ExecutorItem> items = Items(10);
  absl::Mutex mu;
  int outstanding = 0, peak = 0;
  ExecutorOptions options;
  options.workers = 4;
  options.memory_budget = 3;
  absl::Status s = RunOrdered(
      items, options,
      [&](size_t i) {
        {
          absl::MutexLock lock(&mu);
          peak = std::max(peak, ++outstanding);
        }
        absl::SleepFor(absl::Milliseconds(i == 0 ? 200 : 5));
        return absl::OkStatus();
      },
      [&](size_t) {
        absl::MutexLock lock(&mu);
        --outstanding;
        return absl::OkStatus();
      });
  ASSERT_TRUE(s.ok()) << s;
  absl::MutexLock lock(&mu);
  EXPECT_LE(peak, 3);
  EXPECT_GE(peak, 2);  // the budget did let several run
}

TEST(JobExecutor, WindowBoundsReadAhead) {
  const std::vector<ExecutorItem> items = Items(10);
  std::atomic<size_t> committed{0};
  std::atomic<bool> too_far{false};
  ExecutorOptions options;
  options.workers = 4;
  options.window = 2;
  absl::Status s = RunOrdered(
      items, options,
      [&](size_t i) {
        if (i >= committed.load() + 2) too_far = true;
        absl::SleepFor(absl::Milliseconds(2));
        return absl::OkStatus();
      },
      [&](size_t i) {
        committed = i + 1;
        return absl::OkStatus();
      });
  ASSERT_TRUE(s.ok()) << s;
  EXPECT_FALSE(too_far.load());
}

TEST(JobExecutor, ErrorStopsTheRunWithThatError) {
  for (int workers : {1, 3}) {
    const std::vector<ExecutorItem> items = Items(20);
    std::atomic<int> computed{0};
    std::vector<size_t> committed;
    ExecutorOptions options;
    options.workers = workers;
    options.window = 4;
    absl::Status s = RunOrdered(
        items, options,
        [&](size_t i) {
          ++computed;
          if (i == 5) return absl::InvalidArgumentError("item 5 is bad");
          return absl::OkStatus();
        },
        [&](size_t i) {
          committed.push_back(i);
          return absl::OkStatus();
        });
    EXPECT_EQ(s, absl::InvalidArgumentError("item 5 is bad"));
    // Nothing at or past the failed item is committed; the rest never ran.
    for (size_t i : committed) EXPECT_LT(i, 5u);
    EXPECT_LT(computed.load(), 20);
  }
}

TEST(JobExecutor, CommitErrorStopsTheRun) {
  const std::vector<ExecutorItem> items = Items(10);
  std::vector<size_t> committed;
  ExecutorOptions options;
  options.workers = 2;
  absl::Status s = RunOrdered(
      items, options, [](size_t) { return absl::OkStatus(); },
      [&](size_t i) {
        committed.push_back(i);
        return i == 2 ? absl::DataLossError("disk") : absl::OkStatus();
      });
  EXPECT_EQ(s, absl::DataLossError("disk"));
  EXPECT_EQ(committed, (std::vector<size_t>{0, 1, 2}));
}

TEST(JobExecutor, CancelWithItemsInFlightLetsThemFinish) {
  const std::vector<ExecutorItem> items = Items(8);
  std::atomic<bool> cancel{false};
  std::atomic<int> started{0}, finished{0};
  ExecutorOptions options;
  options.workers = 2;
  options.cancel = &cancel;
  absl::Status s = RunOrdered(
      items, options,
      [&](size_t i) {
        ++started;
        if (i == 0) {
          cancel = true;  // while item 0 (and maybe another) is in flight
          absl::SleepFor(absl::Milliseconds(200));
        }
        ++finished;
        return absl::OkStatus();
      },
      [](size_t) { return absl::OkStatus(); });
  EXPECT_EQ(s.code(), absl::StatusCode::kCancelled) << s;
  // Run returned only after the items in flight finished; the rest never
  // started.
  EXPECT_EQ(started.load(), finished.load());
  EXPECT_LT(started.load(), 8);
}

}  // namespace
}  // namespace tailor
