#ifndef TAILOR_SERVER_BLOCKING_EXECUTOR_H_
#define TAILOR_SERVER_BLOCKING_EXECUTOR_H_

#include <deque>
#include <functional>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"

namespace tailor::server {

// A few threads for the work an RPC reaction must not do inline: writes to
// the job store (an fsync) and file reads for result streams. Tasks run in
// FIFO order. The destructor runs the tasks already posted, then joins.
class BlockingExecutor {
 public:
  explicit BlockingExecutor(int threads);
  ~BlockingExecutor();
  BlockingExecutor(const BlockingExecutor&) = delete;
  BlockingExecutor& operator=(const BlockingExecutor&) = delete;

  void Post(std::function<void()> task);

 private:
  void Loop();
  bool HasWork() const ABSL_SHARED_LOCKS_REQUIRED(mu_) {
    return stopping_ || !tasks_.empty();
  }

  absl::Mutex mu_;  // guards tasks_ and stopping_
  std::deque<std::function<void()>> tasks_ ABSL_GUARDED_BY(mu_);
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  std::vector<std::thread> threads_;
};

}  // namespace tailor::server

#endif  // TAILOR_SERVER_BLOCKING_EXECUTOR_H_
