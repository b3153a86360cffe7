#ifndef TAILOR_SERVER_WATCH_REACTOR_H_
#define TAILOR_SERVER_WATCH_REACTOR_H_

#include <grpcpp/grpcpp.h>

#include <cstdint>
#include <deque>
#include <string>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"
#include "jobs/job_manager.h"
#include "server/blocking_executor.h"
#include "server/rpc_counter.h"
#include "server/stream_registry.h"

namespace tailor::server {

// One WatchFusionJob stream: the job's events after `after_sequence`, the
// history first, then live events (woken by a JobManager listener), one
// write at a time. Ends with OK after the job's last event, UNAVAILABLE
// once the registry closes (the drain: after the events available then),
// NOT_FOUND when the job is deleted meanwhile (its listener is notified and
// ReadEvents finds no job), CANCELLED when the client goes away.
//
// Created by the handler, which then calls Start(); deletes itself when the
// RPC is over. `manager`, `executor`, `rpcs` and `registry` must outlive it.
class WatchReactor final : public grpc::ServerWriteReactor<grpc::ByteBuffer>,
                           public DrainableStream {
 public:
  WatchReactor(jobs::JobManager* manager, BlockingExecutor* executor,
               RpcCounter* rpcs, StreamRegistry* registry, std::string name,
               int64_t after, jobs::Caller caller);

  // Checks the job (the call ends with the error when the caller may not
  // watch it), subscribes to it, joins the registry and sends what there is.
  void Start();

  void Close() override { Pump(); }
  void OnWriteDone(bool ok) override;
  void OnCancel() override;
  void OnDone() override;

 private:
  static constexpr size_t kFetchBatch = 256;

  // Sends the next event if no write is in flight; finishes when there is
  // nothing more to send and the job is over (or the registry is closed).
  // StartWrite and Finish are called under mu_ so that no write can start
  // after Finish (gRPC runs reactions on its own threads, never inline).
  // Events older than the job manager's cache are fetched from the store
  // on the executor (a disk read), a batch at a time.
  void Pump();
  // On the executor: reads the next events from the store.
  void Fetch();
  void Send(const jobs::JobEvent& event) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void FinishLocked(const absl::Status& status)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  jobs::JobManager* const manager_;
  BlockingExecutor* const executor_;
  RpcCounter* const rpcs_;
  StreamRegistry* const registry_;
  const std::string name_;
  const jobs::Caller caller_;
  int64_t listener_ = 0;  // 0 until Start() subscribed (and registered)
  // Guards after_, writing_, finished_, fetching_, done_, backlog_ and
  // buffer_. Taken after the registry's lock.
  absl::Mutex mu_;
  int64_t after_ ABSL_GUARDED_BY(mu_);
  bool writing_ ABSL_GUARDED_BY(mu_) = false;
  bool finished_ ABSL_GUARDED_BY(mu_) = false;
  bool fetching_ ABSL_GUARDED_BY(mu_) = false;  // a Fetch() is posted
  bool done_ ABSL_GUARDED_BY(mu_) = false;      // OnDone() ran
  // Events fetched from the store, not yet sent.
  std::deque<jobs::JobEvent> backlog_ ABSL_GUARDED_BY(mu_);
  grpc::ByteBuffer buffer_;  // the serialized event; gRPC's while writing_
};

}  // namespace tailor::server

#endif  // TAILOR_SERVER_WATCH_REACTOR_H_
