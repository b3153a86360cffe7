#ifndef TAILOR_SERVER_RESULT_REACTOR_H_
#define TAILOR_SERVER_RESULT_REACTOR_H_

#include <grpcpp/grpcpp.h>

#include <cstdint>
#include <functional>
#include <string>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"
#include "jobs/job_manager.h"
#include "server/blocking_executor.h"
#include "server/rpc_counter.h"
#include "server/stream_registry.h"
#include "tailor/v1/fusion_service.pb.h"
#include "util/file_util.h"
#include "util/sha256.h"

namespace tailor::server {

// One ReadJobResult stream: a result file in chunks of at most
// kResultChunkBytes with offsets and a final SHA-256. File reads run on the
// executor, never in a reaction; the next chunk is read only once the
// previous one is written, so a stream never buffers more than a chunk
// whatever its reader does. Once the registry closes (the drain), a stream
// that has not sent its last chunk ends with UNAVAILABLE after the write in
// flight.
//
// Created by the handler, which then calls Start() or Refuse(); deletes
// itself after the RPC and its last executor task. `manager`, `executor`,
// `rpcs` and `registry` must outlive it.
class ResultReactor final : public grpc::ServerWriteReactor<grpc::ByteBuffer>,
                            public DrainableStream {
 public:
  static constexpr size_t kResultChunkBytes = 1 << 20;  // < gRPC's 4 MiB

  ResultReactor(jobs::JobManager* manager, BlockingExecutor* executor,
                RpcCounter* rpcs, StreamRegistry* registry,
                jobs::Caller caller);
  ~ResultReactor() override;

  // Takes a slot in the registry and streams result `kind` of job `name`;
  // RESOURCE_EXHAUSTED when the registry is full, UNAVAILABLE when it is
  // closed.
  void Start(std::string name, tailor::v1::ReadJobResultRequest::Kind kind);

  // Nothing to do at once: the stream checks the registry at its next step
  // (there is always a task posted or a write in flight).
  void Close() override {}
  void OnWriteDone(bool ok) override;
  void OnCancel() override;
  // The reactor outlives both the RPC and its last executor task.
  void OnDone() override;

 private:
  absl::Status Open(const std::string& name,
                    tailor::v1::ReadJobResultRequest::Kind kind);
  absl::Status Changed() const;
  // On the executor: reads the next chunk and starts its write.
  void ReadNext();
  void Post(std::function<void()> task);
  void FinishOnce(const absl::Status& status);
  static absl::Status ShuttingDown();

  jobs::JobManager* const manager_;
  BlockingExecutor* const executor_;
  RpcCounter* const rpcs_;
  StreamRegistry* const registry_;
  const jobs::Caller caller_;
  bool registered_ = false;  // holds a slot in registry_
  // Touched by one task or reaction at a time (each write is started only
  // after the previous one completed).
  jobs::JobManager::Result result_;
  ScopedFd fd_;
  uint64_t size_ = 0, offset_ = 0;
  Sha256 sha_;
  bool last_ = false;
  // The one chunk in flight (chunk_ serialized into buffer_).
  tailor::v1::ResultChunk chunk_;
  grpc::ByteBuffer buffer_;
  absl::Mutex mu_;  // guards finished_, done_, pending_ (and orders writes)
  bool finished_ ABSL_GUARDED_BY(mu_) = false;  // Finish() was called
  bool done_ ABSL_GUARDED_BY(mu_) = false;      // OnDone() ran
  int pending_ ABSL_GUARDED_BY(mu_) = 0;        // executor tasks not yet run
};

}  // namespace tailor::server

#endif  // TAILOR_SERVER_RESULT_REACTOR_H_
