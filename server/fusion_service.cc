#include "server/fusion_service.h"

#include <algorithm>
#include <deque>
#include <memory>
#include <string>
#include <type_traits>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "api/spec_convert.h"
#include "google/protobuf/empty.pb.h"
#include "server/grpc_status.h"
#include "server/job_convert.h"
#include "server/raw_message.h"
#include "util/file_util.h"
#include "util/log.h"
#include "util/sha256.h"

namespace tailor::server {
namespace {

namespace v1 = ::tailor::v1;

constexpr size_t kChunkBytes = 1 << 20;  // well under gRPC's 4 MiB default

std::string CodeLabel(absl::StatusCode code) {
  return absl::AsciiStrToLower(absl::StatusCodeToString(code));
}

// Ends a stream whose request could not be parsed: finishes with `status`
// at once and deletes itself when the RPC is over.
class RejectedStream final : public grpc::ServerWriteReactor<grpc::ByteBuffer> {
 public:
  explicit RejectedStream(const grpc::Status& status) { Finish(status); }
  void OnDone() override { delete this; }
};

}  // namespace

// Streams a job's events: history after `after_sequence`, then live events
// (woken by a JobManager listener), one write at a time. Ends with OK after
// the job's last event, UNAVAILABLE when the service closes watches,
// NOT_FOUND when the job is deleted meanwhile (its listener is notified and
// ReadEvents finds no job), CANCELLED when the client goes away.
class WatchReactor : public grpc::ServerWriteReactor<grpc::ByteBuffer> {
 public:
  WatchReactor(FusionServiceImpl* service, std::string name, int64_t after,
               jobs::Caller caller)
      : service_(service),
        name_(std::move(name)),
        caller_(std::move(caller)),
        after_(after) {}

  void Start() {
    {
      // after_ is guarded; the manager's read nests under mu_ as in Pump().
      absl::MutexLock lock(&mu_);
      absl::StatusOr<jobs::JobManager::EventBatch> probe =
          service_->manager_->ReadEvents(name_, after_, 0, false, caller_);
      if (!probe.ok()) {
        FinishLocked(probe.status());
        return;
      }
    }
    absl::StatusOr<std::string> id = jobs::JobIdFromName(name_);
    listener_ = service_->manager_->AddListener(*id, [this] { Pump(); });
    service_->Register(this);
    Pump();
  }

  // Sends the next event if no write is in flight; finishes when there is
  // nothing more to send and the job is over (or watches are closed).
  // StartWrite and Finish are called under mu_ so that no write can start
  // after Finish (gRPC runs reactions on its own threads, never inline).
  // Events older than the job manager's cache are fetched from the store
  // on the service's executor (a disk read), a batch at a time.
  void Pump() {
    absl::MutexLock lock(&mu_);
    if (writing_ || finished_ || fetching_) return;
    if (!backlog_.empty()) {
      Send(backlog_.front());
      backlog_.pop_front();
      return;
    }
    absl::StatusOr<jobs::JobManager::EventBatch> batch =
        service_->manager_->ReadEvents(name_, after_, 1,
                                       /*may_read_store=*/false, caller_);
    if (!batch.ok()) {
      FinishLocked(batch.status());
    } else if (batch->in_store) {
      fetching_ = true;
      service_->executor_.Post([this] { Fetch(); });
    } else if (!batch->events.empty()) {
      Send(batch->events[0]);
    } else if (batch->end) {
      FinishLocked(absl::OkStatus());
    } else if (service_->watches_closed_.load()) {
      FinishLocked(absl::UnavailableError(
          absl::StrCat("the server is shutting down; resume the watch with "
                       "after_sequence=",
                       after_)));
    }
  }

  void OnWriteDone(bool ok) override {
    {
      absl::MutexLock lock(&mu_);
      writing_ = false;
      if (!ok) FinishLocked(absl::CancelledError("the watcher went away"));
    }
    if (ok) Pump();
  }

  void OnCancel() override {
    absl::MutexLock lock(&mu_);
    FinishLocked(absl::CancelledError("the watcher cancelled"));
  }

  void OnDone() override {
    if (listener_ != 0) {
      service_->manager_->RemoveListener(listener_);
      service_->Unregister(this);
    }
    {
      absl::MutexLock lock(&mu_);
      done_ = true;
      if (fetching_) return;  // Fetch() deletes the reactor
    }
    delete this;
  }

 private:
  static constexpr size_t kFetchBatch = 256;

  // On the executor: reads the next events from the store.
  void Fetch() {
    int64_t after;
    {
      absl::MutexLock lock(&mu_);
      after = after_;  // no write runs while fetching_
    }
    absl::StatusOr<jobs::JobManager::EventBatch> batch =
        service_->manager_->ReadEvents(name_, after, kFetchBatch,
                                       /*may_read_store=*/true, caller_);
    bool destroy;
    {
      absl::MutexLock lock(&mu_);
      fetching_ = false;
      destroy = done_;
      if (destroy) {
        // The RPC is over; nothing to send.
      } else if (!batch.ok()) {
        FinishLocked(batch.status());
      } else {
        backlog_.assign(batch->events.begin(), batch->events.end());
      }
    }
    if (destroy) {
      delete this;
      return;
    }
    Pump();
  }

  void Send(const jobs::JobEvent& event) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    v1::JobEvent message;
    EventToProto(event, &message);
    if (absl::Status s = SerializeResponse(message, &buffer_); !s.ok()) {
      FinishLocked(s);
      return;
    }
    after_ = event.sequence;
    writing_ = true;
    StartWrite(&buffer_);
  }

  void FinishLocked(const absl::Status& status)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    if (finished_) return;
    finished_ = true;
    Finish(service_->Outcome("WatchFusionJob", status));
  }

  FusionServiceImpl* const service_;
  const std::string name_;
  const jobs::Caller caller_;
  int64_t listener_ = 0;
  // Guards after_, writing_, finished_, fetching_, done_, backlog_ and
  // buffer_.
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

namespace {

// Streams a result file in 1 MiB chunks with offsets and a final SHA-256.
// File reads run on the service's BlockingExecutor, never in a reaction.
class ResultReactor : public grpc::ServerWriteReactor<grpc::ByteBuffer> {
 public:
  ResultReactor(FusionServiceImpl* service, BlockingExecutor* executor,
                jobs::JobManager* manager, jobs::Caller caller)
      : service_(service),
        executor_(executor),
        manager_(manager),
        caller_(std::move(caller)) {}
  ~ResultReactor() override {
    if (counted_) service_->ReleaseResultStream();
  }

  // Ends the RPC at once (the stream limit): no task is posted.
  void Refuse(const absl::Status& status) { FinishOnce(status); }
  // This stream holds one of the service's result-stream slots.
  void set_counted() { counted_ = true; }

  void Start(std::string name, v1::ReadJobResultRequest::Kind kind) {
    Post([this, name = std::move(name), kind] {
      absl::Status s = Open(name, kind);
      if (!s.ok()) {
        FinishOnce(s);
        return;
      }
      ReadNext();
    });
  }

  void OnWriteDone(bool ok) override {
    if (!ok) {
      FinishOnce(absl::CancelledError("the reader went away"));
    } else if (last_) {
      FinishOnce(absl::OkStatus());
    } else {
      Post([this] { ReadNext(); });
    }
  }

  void OnCancel() override {
    FinishOnce(absl::CancelledError("the reader cancelled"));
  }

  // The reactor outlives both the RPC and its last executor task.
  void OnDone() override {
    bool last;
    {
      absl::MutexLock lock(&mu_);
      done_ = true;
      last = pending_ == 0;
    }
    if (last) delete this;
  }

 private:
  absl::Status Open(const std::string& name,
                    v1::ReadJobResultRequest::Kind kind) {
    if (kind != v1::ReadJobResultRequest::PATCH &&
        kind != v1::ReadJobResultRequest::REPORT) {
      return absl::InvalidArgumentError("kind: must be PATCH or REPORT");
    }
    absl::StatusOr<jobs::JobManager::Result> r = manager_->GetResult(
        name,
        kind == v1::ReadJobResultRequest::PATCH ? jobs::ResultKind::kPatch
                                                : jobs::ResultKind::kReport,
        caller_);
    if (!r.ok()) return r.status();
    result_ = std::move(*r);
    if (!result_.is_inline) {
      absl::StatusOr<ScopedFd> fd = OpenForRead(result_.path);
      if (!fd.ok()) return fd.status();
      absl::StatusOr<uint64_t> size = RegularFileSize(fd->get(), result_.path);
      if (!size.ok()) return size.status();
      fd_ = std::move(*fd);
      size_ = *size;
      // Pinned at success (issue #10 point 4): checked before the first
      // byte goes out, and again over the bytes streamed (ReadNext).
      if (size_ != result_.size) return Changed();
      Sha256 whole;
      std::string buffer;
      for (uint64_t at = 0; at < size_;) {
        const size_t n =
            static_cast<size_t>(std::min<uint64_t>(kChunkBytes, size_ - at));
        buffer.resize(n);
        absl::Status s =
            PReadFully(fd_.get(), buffer.data(), n, at, result_.path);
        if (!s.ok()) return s;
        whole.Update(buffer);
        at += n;
      }
      if (whole.FinalHex() != result_.sha256) return Changed();
    } else {
      size_ = result_.data.size();
    }
    return absl::OkStatus();
  }

  absl::Status Changed() const {
    return absl::DataLossError(absl::StrCat(
        "the patch file ", result_.path,
        " changed since the job succeeded (recorded ", result_.size,
        " bytes, sha256 ", result_.sha256, "); refusing to serve other bytes"));
  }

  // On the executor: reads the next chunk and starts its write.
  void ReadNext() {
    const size_t n =
        static_cast<size_t>(std::min<uint64_t>(kChunkBytes, size_ - offset_));
    chunk_.Clear();
    chunk_.set_offset(offset_);
    chunk_.set_total_size(size_);
    std::string* data = chunk_.mutable_data();
    if (result_.is_inline) {
      data->assign(result_.data, offset_, n);
    } else {
      data->resize(n);
      absl::Status s =
          PReadFully(fd_.get(), data->data(), n, offset_, result_.path);
      if (!s.ok()) {
        FinishOnce(s);
        return;
      }
    }
    sha_.Update(*data);
    offset_ += n;
    if (offset_ == size_) {
      const std::string digest = sha_.FinalHex();
      if (!result_.is_inline && digest != result_.sha256) {
        FinishOnce(Changed());
        return;
      }
      chunk_.set_sha256(digest);
      last_ = true;
    }
    if (absl::Status s = SerializeResponse(chunk_, &buffer_); !s.ok()) {
      FinishOnce(s);
      return;
    }
    absl::MutexLock lock(&mu_);
    if (!finished_) StartWrite(&buffer_);
  }

  void Post(std::function<void()> task) {
    {
      absl::MutexLock lock(&mu_);
      ++pending_;
    }
    executor_->Post([this, task = std::move(task)] {
      task();
      bool last;
      {
        absl::MutexLock lock(&mu_);
        --pending_;
        last = done_ && pending_ == 0;
      }
      if (last) delete this;
    });
  }

  void FinishOnce(const absl::Status& status) {
    absl::MutexLock lock(&mu_);
    if (finished_) return;
    finished_ = true;
    Finish(service_->Outcome("ReadJobResult", status));
  }

  FusionServiceImpl* const service_;
  BlockingExecutor* const executor_;
  jobs::JobManager* const manager_;
  const jobs::Caller caller_;
  // Touched by one task or reaction at a time (each write is started only
  // after the previous one completed).
  jobs::JobManager::Result result_;
  ScopedFd fd_;
  uint64_t size_ = 0, offset_ = 0;
  Sha256 sha_;
  bool last_ = false;
  bool counted_ = false;
  // The one chunk in flight (chunk_ serialized into buffer_): the next is
  // read only after OnWriteDone, so a stream never buffers more than a chunk
  // whatever its reader does.
  v1::ResultChunk chunk_;
  grpc::ByteBuffer buffer_;
  absl::Mutex mu_;  // guards finished_, done_, pending_ (and orders writes)
  bool finished_ ABSL_GUARDED_BY(mu_) = false;  // Finish() was called
  bool done_ ABSL_GUARDED_BY(mu_) = false;      // OnDone() ran
  int pending_ ABSL_GUARDED_BY(mu_) = 0;        // executor tasks not yet run
};

}  // namespace

FusionServiceImpl::FusionServiceImpl(jobs::JobManager* manager,
                                     metrics::Registry* registry,
                                     const auth::Authenticator* auth,
                                     int max_result_streams)
    : manager_(manager),
      auth_(auth),
      max_result_streams_(std::max(1, max_result_streams)),
      rpcs_(registry->AddCounter("tailor_rpcs_total",
                                 "gRPC calls handled, by method and status "
                                 "code.",
                                 {"method", "code"})),
      watch_streams_(registry->AddGauge(
          "tailor_watch_streams",
          "WatchFusionJob streams open now (following a job).")),
      result_streams_gauge_(registry->AddGauge(
          "tailor_result_streams",
          "ReadJobResult streams open now (at most --max-result-streams).")),
      executor_(2) {
  for (const char* method :
       {"CreateFusionJob", "GetFusionJob", "ListFusionJobs", "CancelFusionJob",
        "WatchFusionJob", "ReadJobResult"}) {
    rpcs_->Init({method, CodeLabel(absl::StatusCode::kOk)});
  }
  watch_streams_->Init({});
  result_streams_gauge_->Init({});
}

FusionServiceImpl::~FusionServiceImpl() = default;

grpc::Status FusionServiceImpl::Outcome(const char* method,
                                        const absl::Status& status) {
  rpcs_->Increment({method, CodeLabel(status.code())});
  return ToGrpcStatus(status);
}

grpc::ServerUnaryReactor* FusionServiceImpl::FinishUnary(
    grpc::CallbackServerContext* context, const char* method,
    const absl::Status& status) {
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  reactor->Finish(Outcome(method, status));
  return reactor;
}

template <typename Reactor>
Reactor* FusionServiceImpl::RejectUnparsed(grpc::CallbackServerContext* context,
                                           const char* method,
                                           const grpc::ByteBuffer& raw,
                                           google::protobuf::Message* out) {
  absl::Status status = ParseRequest(raw, out);
  if (status.ok()) return nullptr;
  if constexpr (std::is_same_v<Reactor, grpc::ServerUnaryReactor>) {
    return FinishUnary(context, method, status);
  } else {
    static_assert(
        std::is_same_v<Reactor, grpc::ServerWriteReactor<grpc::ByteBuffer>>);
    return new RejectedStream(Outcome(method, status));
  }
}

void FusionServiceImpl::Audit(grpc::CallbackServerContext* context,
                              const char* method, const auth::Principal* who,
                              absl::string_view job,
                              const absl::Status& outcome) {
  LogFields(LogLevel::kInfo, {{"msg", "audit"},
                              {"principal", who != nullptr ? who->name : ""},
                              {"role", who != nullptr ? who->role : ""},
                              {"method", method},
                              {"job", job},
                              {"peer", context->peer()},
                              {"outcome", CodeLabel(outcome.code())}});
}

grpc::ServerUnaryReactor* FusionServiceImpl::CreateFusionJob(
    grpc::CallbackServerContext* context, const grpc::ByteBuffer* raw,
    grpc::ByteBuffer* response) {
  static constexpr char kMethod[] = "CreateFusionJob";
  absl::StatusOr<auth::Principal> who = auth_->Authenticate(*context);
  if (!who.ok()) {
    Audit(context, kMethod, nullptr, "", who.status());
    return FinishUnary(context, kMethod, who.status());
  }
  auto parsed = std::make_shared<v1::CreateFusionJobRequest>();
  {
    v1::CreateFusionJobRequest* out = parsed.get();
    absl::Status status = ParseRequest(*raw, out);
    if (!status.ok()) {
      Audit(context, kMethod, &*who, "", status);
      return FinishUnary(context, kMethod, status);
    }
  }
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  // Validation resolves paths and creation fsyncs the store: off the
  // reaction thread.
  executor_.Post(
      [this, context, reactor, parsed, response, who = std::move(*who)] {
        const v1::CreateFusionJobRequest* request = parsed.get();
        if (absl::Status bad = api::CheckLayerGradients(request->spec());
            !bad.ok()) {
          Audit(context, kMethod, &who, "", bad);
          reactor->Finish(Outcome(kMethod, bad));
          return;
        }
        jobs::CreateJobRequest r;
        r.spec = api::SpecToJson(request->spec());
        r.priority = request->priority();
        r.labels.insert(request->labels().begin(), request->labels().end());
        r.request_id = request->request_id();
        absl::StatusOr<jobs::Job> job = manager_->CreateJob(r, who.ToCaller());
        absl::Status status = job.status();
        if (job.ok()) {
          v1::FusionJob proto;
          JobToProto(*job, &proto);
          status = SerializeResponse(proto, response);
        }
        Audit(context, kMethod, &who, job.ok() ? job->name() : "", status);
        reactor->Finish(Outcome(kMethod, status));
      });
  return reactor;
}

grpc::ServerUnaryReactor* FusionServiceImpl::GetFusionJob(
    grpc::CallbackServerContext* context, const grpc::ByteBuffer* raw,
    grpc::ByteBuffer* response) {
  absl::StatusOr<auth::Principal> who = auth_->Authenticate(*context);
  if (!who.ok()) return FinishUnary(context, "GetFusionJob", who.status());
  v1::GetFusionJobRequest request;
  if (auto* rejected = RejectUnparsed<grpc::ServerUnaryReactor>(
          context, "GetFusionJob", *raw, &request)) {
    return rejected;
  }
  absl::StatusOr<jobs::Job> job =
      manager_->GetJob(request.name(), who->ToCaller());
  absl::Status status = job.status();
  if (job.ok()) {
    v1::FusionJob proto;
    JobToProto(*job, &proto);
    status = SerializeResponse(proto, response);
  }
  return FinishUnary(context, "GetFusionJob", status);
}

grpc::ServerUnaryReactor* FusionServiceImpl::ListFusionJobs(
    grpc::CallbackServerContext* context, const grpc::ByteBuffer* raw,
    grpc::ByteBuffer* response) {
  absl::StatusOr<auth::Principal> who = auth_->Authenticate(*context);
  if (!who.ok()) return FinishUnary(context, "ListFusionJobs", who.status());
  v1::ListFusionJobsRequest request;
  if (auto* rejected = RejectUnparsed<grpc::ServerUnaryReactor>(
          context, "ListFusionJobs", *raw, &request)) {
    return rejected;
  }
  absl::StatusOr<jobs::ListJobsResult> list =
      manager_->ListJobs(request.page_size(), request.page_token(),
                         request.filter(), who->ToCaller());
  absl::Status status = list.status();
  if (list.ok()) {
    v1::ListFusionJobsResponse proto;
    for (const jobs::Job& job : list->jobs) {
      JobToProto(job, proto.add_fusion_jobs());
    }
    proto.set_next_page_token(list->next_page_token);
    status = SerializeResponse(proto, response);
  }
  return FinishUnary(context, "ListFusionJobs", status);
}

grpc::ServerUnaryReactor* FusionServiceImpl::CancelFusionJob(
    grpc::CallbackServerContext* context, const grpc::ByteBuffer* raw,
    grpc::ByteBuffer* response) {
  static constexpr char kMethod[] = "CancelFusionJob";
  absl::StatusOr<auth::Principal> who = auth_->Authenticate(*context);
  if (!who.ok()) {
    Audit(context, kMethod, nullptr, "", who.status());
    return FinishUnary(context, kMethod, who.status());
  }
  auto request = std::make_shared<v1::CancelFusionJobRequest>();
  {
    v1::CancelFusionJobRequest* out = request.get();
    absl::Status status = ParseRequest(*raw, out);
    if (!status.ok()) {
      Audit(context, kMethod, &*who, "", status);
      return FinishUnary(context, kMethod, status);
    }
  }
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  executor_.Post(
      [this, context, reactor, request, response, who = std::move(*who)] {
        absl::StatusOr<jobs::Job> job =
            manager_->CancelJob(request->name(), who.ToCaller());
        absl::Status status = job.status();
        if (job.ok()) {
          v1::FusionJob proto;
          JobToProto(*job, &proto);
          status = SerializeResponse(proto, response);
        }
        // The name as asked when it is a job name (never arbitrary text).
        Audit(context, kMethod, &who,
              jobs::JobIdFromName(request->name()).ok() ? request->name() : "-",
              status);
        reactor->Finish(Outcome(kMethod, status));
      });
  return reactor;
}

grpc::ServerUnaryReactor* FusionServiceImpl::DeleteFusionJob(
    grpc::CallbackServerContext* context, const grpc::ByteBuffer* raw,
    grpc::ByteBuffer* response) {
  static constexpr char kMethod[] = "DeleteFusionJob";
  absl::StatusOr<auth::Principal> who = auth_->Authenticate(*context);
  if (!who.ok()) {
    Audit(context, kMethod, nullptr, "", who.status());
    return FinishUnary(context, kMethod, who.status());
  }
  auto request = std::make_shared<v1::DeleteFusionJobRequest>();
  {
    v1::DeleteFusionJobRequest* out = request.get();
    absl::Status status = ParseRequest(*raw, out);
    if (!status.ok()) {
      Audit(context, kMethod, &*who, "", status);
      return FinishUnary(context, kMethod, status);
    }
  }
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  // The deletion is a store transaction (an fsync): off the reaction thread.
  executor_.Post([this, context, reactor, request, response,
                  who = std::move(*who)] {
    absl::Status status = manager_->DeleteJob(request->name(), who.ToCaller());
    if (status.ok()) {
      status = SerializeResponse(google::protobuf::Empty(), response);
    }
    Audit(context, kMethod, &who,
          jobs::JobIdFromName(request->name()).ok() ? request->name() : "-",
          status);
    reactor->Finish(Outcome(kMethod, status));
  });
  return reactor;
}

grpc::ServerWriteReactor<grpc::ByteBuffer>* FusionServiceImpl::WatchFusionJob(
    grpc::CallbackServerContext* context, const grpc::ByteBuffer* raw) {
  absl::StatusOr<auth::Principal> who = auth_->Authenticate(*context);
  if (!who.ok()) {
    return new RejectedStream(Outcome("WatchFusionJob", who.status()));
  }
  v1::WatchFusionJobRequest request;
  if (auto* rejected =
          RejectUnparsed<grpc::ServerWriteReactor<grpc::ByteBuffer>>(
              context, "WatchFusionJob", *raw, &request)) {
    return rejected;
  }
  auto* reactor = new WatchReactor(this, request.name(),
                                   request.after_sequence(), who->ToCaller());
  reactor->Start();
  return reactor;
}

grpc::ServerWriteReactor<grpc::ByteBuffer>* FusionServiceImpl::ReadJobResult(
    grpc::CallbackServerContext* context, const grpc::ByteBuffer* raw) {
  absl::StatusOr<auth::Principal> who = auth_->Authenticate(*context);
  if (!who.ok()) {
    return new RejectedStream(Outcome("ReadJobResult", who.status()));
  }
  v1::ReadJobResultRequest request;
  if (auto* rejected =
          RejectUnparsed<grpc::ServerWriteReactor<grpc::ByteBuffer>>(
              context, "ReadJobResult", *raw, &request)) {
    return rejected;
  }
  auto* reactor =
      new ResultReactor(this, &executor_, manager_, who->ToCaller());
  if (!TryAcquireResultStream()) {
    reactor->Refuse(absl::ResourceExhaustedError(absl::StrCat(
        "ReadJobResult: ", max_result_streams_,
        " result streams are open already (tailord --max-result-streams); "
        "retry when one has finished")));
    return reactor;
  }
  reactor->set_counted();
  reactor->Start(request.name(), request.kind());
  return reactor;
}

bool FusionServiceImpl::TryAcquireResultStream() {
  int open = result_streams_.load();
  while (open < max_result_streams_) {
    if (result_streams_.compare_exchange_weak(open, open + 1)) {
      result_streams_gauge_->Increment({}, 1);
      return true;
    }
  }
  return false;
}

void FusionServiceImpl::ReleaseResultStream() {
  result_streams_.fetch_sub(1);
  result_streams_gauge_->Increment({}, -1);
}

void FusionServiceImpl::Register(WatchReactor* watch) {
  absl::MutexLock lock(&watches_mu_);
  watches_.insert(watch);
  watch_streams_->Set({}, static_cast<double>(watches_.size()));
}

void FusionServiceImpl::Unregister(WatchReactor* watch) {
  absl::MutexLock lock(&watches_mu_);
  watches_.erase(watch);
  watch_streams_->Set({}, static_cast<double>(watches_.size()));
}

void FusionServiceImpl::CloseWatches() {
  watches_closed_.store(true);
  absl::MutexLock lock(&watches_mu_);
  for (WatchReactor* w : watches_) w->Pump();
}

}  // namespace tailor::server
