#ifndef TAILOR_SERVER_STREAM_REGISTRY_H_
#define TAILOR_SERVER_STREAM_REGISTRY_H_

// The open server streams of one kind (WatchFusionJob, ReadJobResult):
// counted in a gauge, bounded, and ended together when tailord drains, so
// that their clients see UNAVAILABLE (resume) rather than the CANCELLED of
// grpc::Server::Shutdown.

#include <atomic>
#include <set>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "metrics/registry.h"

namespace tailor::server {

// A stream the drain can end before its time.
class DrainableStream {
 public:
  virtual ~DrainableStream() = default;
  // The registry has closed: the stream ends with UNAVAILABLE ("the server
  // is shutting down") at its next step (at once when it waits for nothing,
  // else when its read or write in flight completes), or with its own
  // outcome if that comes first. Called under the registry's lock: it must
  // not call back into the registry.
  virtual void Close() = 0;
};

// Thread-safe.
class StreamRegistry {
 public:
  // At most `limit` streams open at once; `gauge` (a gauge family without
  // labels, exported from zero here) follows the count. `gauge` must
  // outlive the registry.
  StreamRegistry(metrics::Family* gauge, int limit);
  StreamRegistry(const StreamRegistry&) = delete;
  StreamRegistry& operator=(const StreamRegistry&) = delete;

  // Adds `stream`; false (not added) when `limit` streams are open. A
  // stream added after CloseAll() is open too: it must check closed().
  bool Add(DrainableStream* stream);
  // Removes `stream` (once it is done).
  void Remove(DrainableStream* stream);

  // From now on closed() is true; calls Close() on every open stream.
  void CloseAll();
  // Lock-free: a stream may ask under its own lock (CloseAll holds the
  // registry's lock while it calls Close(), which takes the stream's).
  bool closed() const { return closed_.load(); }
  int limit() const { return limit_; }

  // Waits until no stream is open or `deadline` passes; true if none is.
  bool WaitUntilEmpty(absl::Time deadline);

 private:
  bool Empty() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    return streams_.empty();
  }
  void Publish() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  metrics::Family* const gauge_;
  const int limit_;
  // Guards streams_ (and orders closed_'s setting before the Close()
  // calls). Taken before a stream's own lock.
  absl::Mutex mu_;
  std::set<DrainableStream*> streams_ ABSL_GUARDED_BY(mu_);
  std::atomic<bool> closed_{false};
};

}  // namespace tailor::server

#endif  // TAILOR_SERVER_STREAM_REGISTRY_H_
