#ifndef TAILOR_SERVER_FUSION_SERVICE_H_
#define TAILOR_SERVER_FUSION_SERVICE_H_

#include <functional>
#include <optional>
#include <string>

#include "absl/status/status.h"
#include "absl/time/time.h"
#include "jobs/job_manager.h"
#include "metrics/registry.h"
#include "server/auth/authenticator.h"
#include "server/blocking_executor.h"
#include "server/rpc_counter.h"
#include "server/stream_registry.h"
#include "tailor/v1/fusion_service.grpc.pb.h"

namespace tailor::server {

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

  // For the drain, once the jobs have stopped: ends every open stream
  // with UNAVAILABLE "the server is shutting down": a watch once it has
  // sent the events available now (resume with after_sequence), a result
  // stream after its write in flight (read it again); streams opened from
  // now on end the same way at once. grpc::Server::Shutdown would end them
  // CANCELLED instead.
  void CloseStreams();
  // Waits until every stream has ended (its status sent) or `deadline`
  // passes; true if they all have.
  bool WaitForStreams(absl::Time deadline);

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

 private:
  // Who calls and what they ask: the first step of every handler.
  struct Admission {
    absl::Status status;                 // OK, or the error the call ends with
    std::optional<auth::Principal> who;  // set once authenticated
  };
  // Authenticates the caller (UNAUTHENTICATED before the request is read),
  // then parses `raw` into `request` (INVALID_ARGUMENT naming the field).
  Admission Admit(grpc::CallbackServerContext* context,
                  const grpc::ByteBuffer& raw,
                  google::protobuf::Message* request) const;

  // What a mutating call did: its outcome and the job its audit line names.
  struct Mutation {
    absl::Status status;
    std::string job;
  };
  // A read-only unary call (Get, List): admits the call, then `answer`
  // (in memory, run inline) writes the response; the outcome is counted.
  template <typename Request>
  grpc::ServerUnaryReactor* Lookup(
      grpc::CallbackServerContext* context, const char* method,
      const grpc::ByteBuffer& raw,
      std::function<absl::Status(const Request&, const jobs::Caller&)> answer);
  // A mutating unary call (Create, Cancel, Delete): admits the call, runs
  // `work` on the executor (store writes fsync; validation resolves paths),
  // audits and counts the outcome, rejections included.
  template <typename Request>
  grpc::ServerUnaryReactor* Mutate(
      grpc::CallbackServerContext* context, const char* method,
      const grpc::ByteBuffer& raw,
      std::function<Mutation(const Request&, const jobs::Caller&)> work);
  grpc::ServerUnaryReactor* FinishUnary(grpc::CallbackServerContext* context,
                                        const char* method,
                                        const absl::Status& status);
  // The audit line of a mutating call; `who` null when unauthenticated.
  static void Audit(grpc::CallbackServerContext* context, const char* method,
                    const auth::Principal* who, absl::string_view job,
                    const absl::Status& outcome);

  jobs::JobManager* const manager_;
  const auth::Authenticator* const auth_;
  RpcCounter rpcs_;
  StreamRegistry watches_;  // gauge tailor_watch_streams
  StreamRegistry results_;  // gauge tailor_result_streams
  // Last: destroyed first, running the tasks posted (which use the above).
  BlockingExecutor executor_;
};

}  // namespace tailor::server

#endif  // TAILOR_SERVER_FUSION_SERVICE_H_
