#include "server/fusion_service.h"

#include <limits>
#include <memory>
#include <string>
#include <utility>

#include "api/spec_convert.h"
#include "google/protobuf/empty.pb.h"
#include "server/job_convert.h"
#include "server/raw_message.h"
#include "server/result_reactor.h"
#include "server/watch_reactor.h"
#include "util/log.h"

namespace tailor::server {
namespace {

namespace v1 = ::tailor::v1;

// Ends a stream that was not admitted: finishes with `status` at once and
// deletes itself when the RPC is over.
class RejectedStream final : public grpc::ServerWriteReactor<grpc::ByteBuffer> {
 public:
  explicit RejectedStream(const grpc::Status& status) { Finish(status); }
  void OnDone() override { delete this; }
};

// `job` as the response, or its error.
absl::Status RespondJob(const absl::StatusOr<jobs::Job>& job,
                        grpc::ByteBuffer* response) {
  if (!job.ok()) return job.status();
  v1::FusionJob proto;
  JobToProto(*job, &proto);
  return SerializeResponse(proto, response);
}

// The job an audit line names for a request naming `name`: the name as
// asked when it is a job name (never arbitrary text), else "-".
std::string AuditedName(const std::string& name) {
  return jobs::JobIdFromName(name).ok() ? name : "-";
}

}  // namespace

FusionServiceImpl::FusionServiceImpl(jobs::JobManager* manager,
                                     metrics::Registry* registry,
                                     const auth::Authenticator* auth,
                                     int max_result_streams)
    : manager_(manager),
      auth_(auth),
      rpcs_(registry, {"CreateFusionJob", "GetFusionJob", "ListFusionJobs",
                       "CancelFusionJob", "WatchFusionJob", "ReadJobResult"}),
      watches_(registry->AddGauge(
                   "tailor_watch_streams",
                   "WatchFusionJob streams open now (following a job)."),
               std::numeric_limits<int>::max()),
      results_(registry->AddGauge("tailor_result_streams",
                                  "ReadJobResult streams open now (at most "
                                  "--max-result-streams)."),
               max_result_streams),
      executor_(2) {}

FusionServiceImpl::~FusionServiceImpl() = default;

void FusionServiceImpl::CloseStreams() {
  watches_.CloseAll();
  results_.CloseAll();
}

bool FusionServiceImpl::WaitForStreams(absl::Time deadline) {
  const bool watches = watches_.WaitUntilEmpty(deadline);
  return results_.WaitUntilEmpty(deadline) && watches;
}

FusionServiceImpl::Admission FusionServiceImpl::Admit(
    grpc::CallbackServerContext* context, const grpc::ByteBuffer& raw,
    google::protobuf::Message* request) const {
  absl::StatusOr<auth::Principal> who = auth_->Authenticate(*context);
  if (!who.ok()) return {who.status(), std::nullopt};
  return {ParseRequest(raw, request), *std::move(who)};
}

grpc::ServerUnaryReactor* FusionServiceImpl::FinishUnary(
    grpc::CallbackServerContext* context, const char* method,
    const absl::Status& status) {
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  reactor->Finish(rpcs_.Outcome(method, status));
  return reactor;
}

template <typename Request>
grpc::ServerUnaryReactor* FusionServiceImpl::Lookup(
    grpc::CallbackServerContext* context, const char* method,
    const grpc::ByteBuffer& raw,
    std::function<absl::Status(const Request&, const jobs::Caller&)> answer) {
  Request request;
  Admission admitted = Admit(context, raw, &request);
  if (!admitted.status.ok()) {
    return FinishUnary(context, method, admitted.status);
  }
  return FinishUnary(context, method,
                     answer(request, admitted.who->ToCaller()));
}

template <typename Request>
grpc::ServerUnaryReactor* FusionServiceImpl::Mutate(
    grpc::CallbackServerContext* context, const char* method,
    const grpc::ByteBuffer& raw,
    std::function<Mutation(const Request&, const jobs::Caller&)> work) {
  auto request = std::make_shared<Request>();
  Admission admitted = Admit(context, raw, request.get());
  if (!admitted.status.ok()) {
    Audit(context, method, admitted.who ? &*admitted.who : nullptr, "",
          admitted.status);
    return FinishUnary(context, method, admitted.status);
  }
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  executor_.Post([this, context, method, reactor, request,
                  work = std::move(work), who = *std::move(admitted.who)] {
    const Mutation done = work(*request, who.ToCaller());
    Audit(context, method, &who, done.job, done.status);
    reactor->Finish(rpcs_.Outcome(method, done.status));
  });
  return reactor;
}

void FusionServiceImpl::Audit(grpc::CallbackServerContext* context,
                              const char* method, const auth::Principal* who,
                              absl::string_view job,
                              const absl::Status& outcome) {
  LogFields(LogLevel::kInfo,
            {{"msg", "audit"},
             {"principal", who != nullptr ? who->name : ""},
             {"role", who != nullptr ? who->role : ""},
             {"method", method},
             {"job", job},
             {"peer", context->peer()},
             {"outcome", RpcCounter::CodeLabel(outcome.code())}});
}

grpc::ServerUnaryReactor* FusionServiceImpl::CreateFusionJob(
    grpc::CallbackServerContext* context, const grpc::ByteBuffer* raw,
    grpc::ByteBuffer* response) {
  return Mutate<v1::CreateFusionJobRequest>(
      context, "CreateFusionJob", *raw,
      [this, response](const v1::CreateFusionJobRequest& request,
                       const jobs::Caller& caller) -> Mutation {
        if (absl::Status bad = api::CheckLayerGradients(request.spec());
            !bad.ok()) {
          return {bad, ""};
        }
        jobs::CreateJobRequest r;
        r.spec = api::SpecToJson(request.spec());
        r.priority = request.priority();
        r.labels.insert(request.labels().begin(), request.labels().end());
        r.request_id = request.request_id();
        absl::StatusOr<jobs::Job> job = manager_->CreateJob(r, caller);
        return {RespondJob(job, response), job.ok() ? job->name() : ""};
      });
}

grpc::ServerUnaryReactor* FusionServiceImpl::GetFusionJob(
    grpc::CallbackServerContext* context, const grpc::ByteBuffer* raw,
    grpc::ByteBuffer* response) {
  return Lookup<v1::GetFusionJobRequest>(
      context, "GetFusionJob", *raw,
      [this, response](const v1::GetFusionJobRequest& request,
                       const jobs::Caller& caller) {
        return RespondJob(manager_->GetJob(request.name(), caller), response);
      });
}

grpc::ServerUnaryReactor* FusionServiceImpl::ListFusionJobs(
    grpc::CallbackServerContext* context, const grpc::ByteBuffer* raw,
    grpc::ByteBuffer* response) {
  return Lookup<v1::ListFusionJobsRequest>(
      context, "ListFusionJobs", *raw,
      [this, response](const v1::ListFusionJobsRequest& request,
                       const jobs::Caller& caller) {
        absl::StatusOr<jobs::ListJobsResult> list =
            manager_->ListJobs(request.page_size(), request.page_token(),
                               request.filter(), caller);
        if (!list.ok()) return list.status();
        v1::ListFusionJobsResponse proto;
        for (const jobs::Job& job : list->jobs) {
          JobToProto(job, proto.add_fusion_jobs());
        }
        proto.set_next_page_token(list->next_page_token);
        return SerializeResponse(proto, response);
      });
}

grpc::ServerUnaryReactor* FusionServiceImpl::CancelFusionJob(
    grpc::CallbackServerContext* context, const grpc::ByteBuffer* raw,
    grpc::ByteBuffer* response) {
  return Mutate<v1::CancelFusionJobRequest>(
      context, "CancelFusionJob", *raw,
      [this, response](const v1::CancelFusionJobRequest& request,
                       const jobs::Caller& caller) -> Mutation {
        return {
            RespondJob(manager_->CancelJob(request.name(), caller), response),
            AuditedName(request.name())};
      });
}

grpc::ServerUnaryReactor* FusionServiceImpl::DeleteFusionJob(
    grpc::CallbackServerContext* context, const grpc::ByteBuffer* raw,
    grpc::ByteBuffer* response) {
  return Mutate<v1::DeleteFusionJobRequest>(
      context, "DeleteFusionJob", *raw,
      [this, response](const v1::DeleteFusionJobRequest& request,
                       const jobs::Caller& caller) -> Mutation {
        absl::Status status = manager_->DeleteJob(request.name(), caller);
        if (status.ok()) {
          status = SerializeResponse(google::protobuf::Empty(), response);
        }
        return {status, AuditedName(request.name())};
      });
}

grpc::ServerWriteReactor<grpc::ByteBuffer>* FusionServiceImpl::WatchFusionJob(
    grpc::CallbackServerContext* context, const grpc::ByteBuffer* raw) {
  static constexpr char kMethod[] = "WatchFusionJob";
  v1::WatchFusionJobRequest request;
  Admission admitted = Admit(context, *raw, &request);
  if (!admitted.status.ok()) {
    return new RejectedStream(rpcs_.Outcome(kMethod, admitted.status));
  }
  auto* reactor =
      new WatchReactor(manager_, &executor_, &rpcs_, &watches_, request.name(),
                       request.after_sequence(), admitted.who->ToCaller());
  reactor->Start();
  return reactor;
}

grpc::ServerWriteReactor<grpc::ByteBuffer>* FusionServiceImpl::ReadJobResult(
    grpc::CallbackServerContext* context, const grpc::ByteBuffer* raw) {
  static constexpr char kMethod[] = "ReadJobResult";
  v1::ReadJobResultRequest request;
  Admission admitted = Admit(context, *raw, &request);
  if (!admitted.status.ok()) {
    return new RejectedStream(rpcs_.Outcome(kMethod, admitted.status));
  }
  auto* reactor = new ResultReactor(manager_, &executor_, &rpcs_, &results_,
                                    admitted.who->ToCaller());
  reactor->Start(request.name(), request.kind());
  return reactor;
}

}  // namespace tailor::server
