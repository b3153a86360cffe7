#ifndef TAILOR_SERVER_FUSION_SERVICE_H_
#define TAILOR_SERVER_FUSION_SERVICE_H_

#include <atomic>
#include <set>
#include <string>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"
#include "jobs/job_manager.h"
#include "metrics/registry.h"
#include "server/auth/authenticator.h"
#include "server/blocking_executor.h"
#include "tailor/v1/fusion_service.grpc.pb.h"

namespace tailor::server {

class WatchReactor;

namespace internal {
using FS = ::tailor::v1::FusionService;
// tailor.v1.FusionService with every method registered raw.
using RawFusionService = FS::WithRawCallbackMethod_CreateFusionJob<
    FS::WithRawCallbackMethod_GetFusionJob<
        FS::WithRawCallbackMethod_ListFusionJobs<
            FS::WithRawCallbackMethod_CancelFusionJob<
                FS::WithRawCallbackMethod_DeleteFusionJob<
                    FS::WithRawCallbackMethod_WatchFusionJob<
                        FS::WithRawCallbackMethod_ReadJobResult<
                            FS::CallbackService>>>>>>>;
}  // namespace internal

// tailor.v1.FusionService on the gRPC callback API: a thin adapter over
// jobs::JobManager. Handlers translate messages and statuses; reactions
// never block (store writes and file reads go to a BlockingExecutor; event
// reads are in-memory). Every RPC's outcome is counted in
// tailor_rpcs_total{method, code} (every method exported from zero with
// code "ok"); open streams in tailor_watch_streams and tailor_result_streams.
//
// Every handler first asks `auth` who calls (auth::Authenticator): an
// unauthenticated call ends UNAUTHENTICATED before its request is read; the
// principal goes to the job manager, which lets a caller see and act on its
// own jobs only (an admin on all). Each mutating call (CreateFusionJob,
// CancelFusionJob, DeleteFusionJob), accepted or not, writes one audit line
// (logfmt: msg=audit principal role method job peer outcome); no token is ever
// logged.
//
// Thread-safe. `manager`, `registry` and `auth` must outlive the service,
// and the gRPC server must be shut down before the service is destroyed.
//
// Every method is registered raw (bytes in, bytes out): the service parses
// each request itself (api::ParseMessage), so a request gRPC could not
// parse, such as invalid UTF-8 in a string field, is INVALID_ARGUMENT naming
// the field rather than gRPC's bare UNIMPLEMENTED; responses and stream
// messages are serialized by the service (one write in flight per stream).
// Method names and wire format are those of tailor.v1.FusionService.
class FusionServiceImpl final : public internal::RawFusionService {
 public:
  // At most `max_result_streams` ReadJobResult streams are open at once;
  // more are RESOURCE_EXHAUSTED.
  FusionServiceImpl(jobs::JobManager* manager, metrics::Registry* registry,
                    const auth::Authenticator* auth,
                    int max_result_streams = 64);
  ~FusionServiceImpl() override;

  // Ends every open watch once it has sent the events available now, with
  // UNAVAILABLE (the server is going away; resume with after_sequence); new
  // watches end the same way. For the drain, after the jobs stopped.
  void CloseWatches();

  // Requests are the serialized tailor.v1 request messages; responses the
  // serialized FusionJob, ListFusionJobsResponse, JobEvent or ResultChunk.
  grpc::ServerUnaryReactor* CreateFusionJob(
      grpc::CallbackServerContext* context, const grpc::ByteBuffer* request,
      grpc::ByteBuffer* response) override;
  grpc::ServerUnaryReactor* GetFusionJob(grpc::CallbackServerContext* context,
                                         const grpc::ByteBuffer* request,
                                         grpc::ByteBuffer* response) override;
  grpc::ServerUnaryReactor* ListFusionJobs(grpc::CallbackServerContext* context,
                                           const grpc::ByteBuffer* request,
                                           grpc::ByteBuffer* response) override;
  grpc::ServerUnaryReactor* CancelFusionJob(
      grpc::CallbackServerContext* context, const grpc::ByteBuffer* request,
      grpc::ByteBuffer* response) override;
  grpc::ServerUnaryReactor* DeleteFusionJob(
      grpc::CallbackServerContext* context, const grpc::ByteBuffer* request,
      grpc::ByteBuffer* response) override;
  grpc::ServerWriteReactor<grpc::ByteBuffer>* WatchFusionJob(
      grpc::CallbackServerContext* context,
      const grpc::ByteBuffer* request) override;
  grpc::ServerWriteReactor<grpc::ByteBuffer>* ReadJobResult(
      grpc::CallbackServerContext* context,
      const grpc::ByteBuffer* request) override;

  // For reactors: counts the outcome and converts the status.
  grpc::Status Outcome(const char* method, const absl::Status& status);
  // For result streams: takes a slot (false at the limit) / gives it back.
  bool TryAcquireResultStream();
  void ReleaseResultStream();

 private:
  friend class WatchReactor;
  grpc::ServerUnaryReactor* FinishUnary(grpc::CallbackServerContext* context,
                                        const char* method,
                                        const absl::Status& status);
  // Parses the raw request `raw` of `method` into `out`. Returns nullptr
  // when it did; otherwise a reactor that ends the call with the parse
  // error (INVALID_ARGUMENT naming the field), counted for `method`.
  // Reactor: grpc::ServerUnaryReactor (the context's default reactor) or
  // grpc::ServerWriteReactor<grpc::ByteBuffer>.
  template <typename Reactor>
  Reactor* RejectUnparsed(grpc::CallbackServerContext* context,
                          const char* method, const grpc::ByteBuffer& raw,
                          google::protobuf::Message* out);
  // The audit line of a mutating call; `who` null when unauthenticated.
  static void Audit(grpc::CallbackServerContext* context, const char* method,
                    const auth::Principal* who, absl::string_view job,
                    const absl::Status& outcome);
  void Register(WatchReactor* watch);
  void Unregister(WatchReactor* watch);

  jobs::JobManager* const manager_;
  const auth::Authenticator* const auth_;
  const int max_result_streams_;
  std::atomic<int> result_streams_{0};  // open ReadJobResult streams
  metrics::Family* const rpcs_;
  metrics::Family* const watch_streams_;         // gauge: watches_.size()
  metrics::Family* const result_streams_gauge_;  // gauge: result_streams_
  BlockingExecutor executor_;
  std::atomic<bool> watches_closed_{false};
  absl::Mutex watches_mu_;  // guards watches_
  std::set<WatchReactor*> watches_ ABSL_GUARDED_BY(watches_mu_);
};

}  // namespace tailor::server

#endif  // TAILOR_SERVER_FUSION_SERVICE_H_
