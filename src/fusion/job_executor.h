#ifndef TAILOR_FUSION_JOB_EXECUTOR_H_
#define TAILOR_FUSION_JOB_EXECUTOR_H_

// Runs the work items of one job concurrently and commits their results in
// plan order (issue #12). Generic and torch-free: an item is an index with a
// cost and a memory footprint; what computing and committing mean is the
// caller's (FusionRun, fusion_run.h, computes tensors and feeds the writers).

#include <atomic>
#include <cstdint>
#include <functional>
#include <vector>

#include "absl/status/status.h"

namespace tailor {

// The message of the CANCELLED status RunOrdered returns when
// options.cancel stopped it (a compute or commit may return its own).
inline constexpr char kExecutorCancelled[] =
    "cancelled while items were computed";

struct ExecutorItem {
  // Dispatch priority: among the items that may start, the costliest goes
  // first (ties: the lowest index), so that long items do not end a job
  // alone. Commit order is always the index order.
  int64_t cost = 0;
  // Host memory the item holds while it computes (its inputs in flight and
  // working memory), bytes, >= 0.
  int64_t bytes = 0;
  // Memory its result holds from the end of its computation until it is
  // committed, bytes, >= 0 (at most `bytes`).
  int64_t result_bytes = 0;
};

struct ExecutorOptions {
  // Compute threads, >= 1. With 1 the items run one after the other on the
  // calling thread, in index order (no threads are created).
  int workers = 1;
  // Bound on the bytes held by the items computing (ExecutorItem::bytes)
  // and the results waiting to be committed (result_bytes); 0: no bound. The
  // lowest-index uncommitted item is always admitted, whatever its size and the
  // bound, so the executor never deadlocks; every other item waits until it
  // fits.
  int64_t memory_budget = 0;
  // Read-ahead: only items whose index is below the next one to commit
  // plus `window` may start (0: any), so results do not pile up behind a
  // slow item and cost order stays local.
  int window = 0;
  // Checked before each item starts and while waiting; once true no new
  // item starts, the items in flight finish (their results are dropped),
  // and RunOrdered returns CANCELLED (kExecutorCancelled). Optional, not owned.
  const std::atomic<bool>* cancel = nullptr;
  // Told the number of items computing now and of those not yet started
  // after every change; called with the executor's lock held, so it must
  // be fast and must not call back into the executor. Optional.
  std::function<void(int in_flight, int queued)> on_gauges;
};

// Runs compute(i) for every item i on `options.workers` threads and
// commit(i) on the calling thread, strictly in increasing i, each after
// compute(i) returned OK. compute may run concurrently for different
// items; commit never overlaps another commit. The first error (of a
// compute or a commit) stops the run: no new item starts, no further item
// is committed, the items in flight finish, and that error is returned.
// Returns OK once every item is committed.
absl::Status RunOrdered(const std::vector<ExecutorItem>& items,
                        const ExecutorOptions& options,
                        const std::function<absl::Status(size_t)>& compute,
                        const std::function<absl::Status(size_t)>& commit);

}  // namespace tailor

#endif  // TAILOR_FUSION_JOB_EXECUTOR_H_
