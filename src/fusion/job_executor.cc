#include "fusion/job_executor.h"

#include <algorithm>
#include <set>
#include <thread>
#include <utility>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"

namespace tailor {
namespace {

// How often waiters look at options.cancel (an atomic nobody signals).
constexpr absl::Duration kCancelPoll = absl::Milliseconds(50);

bool Cancelled(const ExecutorOptions& options) {
  return options.cancel != nullptr && options.cancel->load();
}

absl::Status CancelledStatus() {
  return absl::CancelledError(kExecutorCancelled);
}

// The shared state of one multi-threaded run.
class Run {
 public:
  Run(const std::vector<ExecutorItem>& items, const ExecutorOptions& options,
      const std::function<absl::Status(size_t)>& compute,
      const std::function<absl::Status(size_t)>& commit)
      : items_(items),
        options_(options),
        compute_(compute),
        commit_(commit),
        done_(items.size(), false) {
    for (size_t i = 0; i < items.size(); ++i) pending_.insert(i);
  }

  absl::Status Go() {
    std::vector<std::thread> workers;
    const int n = std::max(1, options_.workers);
    for (int w = 0; w < n; ++w) workers.emplace_back([this] { Work(); });
    Commit();
    {
      absl::MutexLock lock(&mu_);
      stop_ = true;
    }
    for (std::thread& t : workers) t.join();
    absl::MutexLock lock(&mu_);
    return error_;
  }

 private:
  // Orders pending items: costliest first, then the lowest index.
  struct ByCost {
    const std::vector<ExecutorItem>* items;
    bool operator()(size_t a, size_t b) const {
      const int64_t ca = (*items)[a].cost, cb = (*items)[b].cost;
      return ca != cb ? ca > cb : a < b;
    }
  };

  void Gauges() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    if (options_.on_gauges) {
      options_.on_gauges(running_, static_cast<int>(pending_.size()));
    }
  }

  void Fail(absl::Status status) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    if (error_.ok()) error_ = std::move(status);
    stop_ = true;
  }

  // The item to start now, or items_.size() if none may.
  size_t Pick() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    // The next item to commit always starts: the run cannot deadlock.
    if (pending_.count(next_) != 0) return next_;
    for (size_t i : pending_) {
      if (options_.window > 0 &&
          i >= next_ + static_cast<size_t>(options_.window)) {
        continue;
      }
      if (options_.memory_budget <= 0 ||
          held_ + items_[i].bytes <= options_.memory_budget) {
        return i;
      }
    }
    return items_.size();
  }

  void Work() {
    mu_.Lock();
    for (;;) {
      size_t pick = items_.size();
      auto ready = [&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
        if (stop_) return true;
        pick = Pick();
        return pick < items_.size();
      };
      while (!mu_.AwaitWithTimeout(absl::Condition(&ready), kCancelPoll)) {
        if (Cancelled(options_)) Fail(CancelledStatus());
      }
      if (!stop_ && Cancelled(options_)) Fail(CancelledStatus());
      if (stop_) break;
      pending_.erase(pick);
      held_ += items_[pick].bytes;
      ++running_;
      Gauges();
      mu_.Unlock();
      absl::Status s = compute_(pick);
      mu_.Lock();
      --running_;
      if (s.ok()) {
        done_[pick] = true;
        held_ -= items_[pick].bytes - items_[pick].result_bytes;
      } else {
        Fail(std::move(s));
      }
      Gauges();
    }
    mu_.Unlock();
  }

  void Commit() {
    mu_.Lock();
    while (next_ < items_.size()) {
      auto ready = [&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
        return stop_ || done_[next_];
      };
      while (!mu_.AwaitWithTimeout(absl::Condition(&ready), kCancelPoll)) {
        if (Cancelled(options_)) Fail(CancelledStatus());
      }
      if (stop_) break;
      const size_t i = next_;
      mu_.Unlock();
      absl::Status s = commit_(i);
      mu_.Lock();
      held_ -= items_[i].result_bytes;
      ++next_;
      if (!s.ok()) Fail(std::move(s));
    }
    mu_.Unlock();
  }

  const std::vector<ExecutorItem>& items_;
  const ExecutorOptions& options_;
  const std::function<absl::Status(size_t)>& compute_;
  const std::function<absl::Status(size_t)>& commit_;

  absl::Mutex mu_;  // guards everything below; every change is awaited
  std::set<size_t, ByCost> pending_ ABSL_GUARDED_BY(mu_){ByCost{&items_}};
  std::vector<bool> done_ ABSL_GUARDED_BY(mu_);  // computed, by index
  size_t next_ ABSL_GUARDED_BY(mu_) = 0;         // the next to commit
  // Bytes of the items computing and of the results not yet committed.
  int64_t held_ ABSL_GUARDED_BY(mu_) = 0;
  int running_ ABSL_GUARDED_BY(mu_) = 0;
  bool stop_ ABSL_GUARDED_BY(mu_) = false;
  absl::Status error_ ABSL_GUARDED_BY(mu_);  // the first error
};

}  // namespace

absl::Status RunOrdered(const std::vector<ExecutorItem>& items,
                        const ExecutorOptions& options,
                        const std::function<absl::Status(size_t)>& compute,
                        const std::function<absl::Status(size_t)>& commit) {
  if (options.workers <= 1) {
    for (size_t i = 0; i < items.size(); ++i) {
      if (Cancelled(options)) return CancelledStatus();
      if (options.on_gauges) {
        options.on_gauges(1, static_cast<int>(items.size() - i - 1));
      }
      absl::Status s = compute(i);
      if (options.on_gauges) {
        options.on_gauges(0, static_cast<int>(items.size() - i - 1));
      }
      if (!s.ok()) return s;
      if (absl::Status c = commit(i); !c.ok()) return c;
    }
    return absl::OkStatus();
  }
  Run run(items, options, compute, commit);
  return run.Go();
}

}  // namespace tailor
