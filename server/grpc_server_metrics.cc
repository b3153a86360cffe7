#include "server/grpc_server_metrics.h"

#include <atomic>
#include <vector>

#include "absl/strings/str_cat.h"
#include "google/protobuf/descriptor.h"
#include "grpcpp/server_context.h"
#include "grpcpp/support/interceptor.h"
#include "util/stopwatch.h"

namespace tailor::server {
namespace {

using Hook = grpc::experimental::InterceptionHookPoints;
using Type = grpc::experimental::ServerRpcInfo::Type;

// Prometheus' DefBuckets.
const std::vector<double> kBuckets = {0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
                                      0.5,   1,    2.5,   5,    10};

const char* TypeName(Type type) {
  switch (type) {
    case Type::UNARY:
      return "unary";
    case Type::CLIENT_STREAMING:
      return "client_stream";
    case Type::SERVER_STREAMING:
      return "server_stream";
    case Type::BIDI_STREAMING:
      return "bidi_stream";
  }
  return "unknown";
}

// {grpc_type, grpc_service, grpc_method} of "/package.Service/Method".
metrics::Family::Labels MethodLabels(const char* type, absl::string_view path) {
  if (!path.empty() && path[0] == '/') path.remove_prefix(1);
  const size_t slash = path.find('/');
  if (slash == absl::string_view::npos) {
    return {type, "unknown", std::string(path)};
  }
  return {type, std::string(path.substr(0, slash)),
          std::string(path.substr(slash + 1))};
}

// Every status code with its go-grpc-prometheus name, in code order.
struct CodeAndName {
  grpc::StatusCode code;
  const char* name;
};
constexpr CodeAndName kAllCodes[] = {
    {grpc::OK, "OK"},
    {grpc::CANCELLED, "Canceled"},
    {grpc::UNKNOWN, "Unknown"},
    {grpc::INVALID_ARGUMENT, "InvalidArgument"},
    {grpc::DEADLINE_EXCEEDED, "DeadlineExceeded"},
    {grpc::NOT_FOUND, "NotFound"},
    {grpc::ALREADY_EXISTS, "AlreadyExists"},
    {grpc::PERMISSION_DENIED, "PermissionDenied"},
    {grpc::RESOURCE_EXHAUSTED, "ResourceExhausted"},
    {grpc::FAILED_PRECONDITION, "FailedPrecondition"},
    {grpc::ABORTED, "Aborted"},
    {grpc::OUT_OF_RANGE, "OutOfRange"},
    {grpc::UNIMPLEMENTED, "Unimplemented"},
    {grpc::INTERNAL, "Internal"},
    {grpc::UNAVAILABLE, "Unavailable"},
    {grpc::DATA_LOSS, "DataLoss"},
    {grpc::UNAUTHENTICATED, "Unauthenticated"},
};

}  // namespace

const char* GrpcServerMetrics::CodeName(grpc::StatusCode code) {
  for (const CodeAndName& c : kAllCodes) {
    if (c.code == code) return c.name;
  }
  return "Unknown";
}

// One per RPC. gRPC runs its hooks one batch at a time per call, but the
// batches of a streaming call may run on different threads: the counters
// are thread-safe and `handled_` is atomic.
class GrpcServerMetrics::Interceptor final
    : public grpc::experimental::Interceptor {
 public:
  Interceptor(const GrpcServerMetrics* metrics, metrics::Family::Labels labels,
              grpc::ServerContextBase* context)
      : metrics_(metrics), labels_(std::move(labels)), context_(context) {
    metrics_->started_->Increment(labels_);
  }

  // An RPC that ended without sending a status: the client cancelled or
  // went away.
  ~Interceptor() override {
    if (!handled_.exchange(true)) Handled(grpc::CANCELLED);
  }

  void Intercept(
      grpc::experimental::InterceptorBatchMethods* methods) override {
    if (methods->QueryInterceptionHookPoint(Hook::POST_RECV_MESSAGE) &&
        methods->GetRecvMessage() != nullptr) {
      metrics_->received_->Increment(labels_);
    }
    if (methods->QueryInterceptionHookPoint(Hook::PRE_SEND_MESSAGE)) {
      metrics_->sent_->Increment(labels_);
    }
    if (methods->QueryInterceptionHookPoint(Hook::PRE_SEND_STATUS) &&
        !handled_.exchange(true)) {
      grpc::StatusCode code = methods->GetSendStatus().error_code();
      // A call the client cancelled ends as Canceled whatever the handler
      // then finishes with (gRPC's health Watch says UNKNOWN), as in Go,
      // where the handler sees its context cancelled.
      if (code != grpc::DEADLINE_EXCEEDED && context_ != nullptr &&
          context_->IsCancelled()) {
        code = grpc::CANCELLED;
      }
      Handled(code);
    }
    methods->Proceed();
  }

 private:
  void Handled(grpc::StatusCode code) {
    metrics::Family::Labels with_code = labels_;
    with_code.push_back(CodeName(code));
    metrics_->handled_->Increment(with_code);
    metrics_->seconds_->Observe(labels_, clock_.Seconds());
  }

  const GrpcServerMetrics* const metrics_;
  const metrics::Family::Labels labels_;
  grpc::ServerContextBase* const context_;  // the call's; outlives this
  const Stopwatch clock_;                   // started with the call
  std::atomic<bool> handled_{false};
};

class GrpcServerMetrics::Factory final
    : public grpc::experimental::ServerInterceptorFactoryInterface {
 public:
  explicit Factory(const GrpcServerMetrics* metrics) : metrics_(metrics) {}
  grpc::experimental::Interceptor* CreateServerInterceptor(
      grpc::experimental::ServerRpcInfo* info) override {
    if (info->method() == nullptr) return nullptr;
    const char* type = TypeName(info->type());
    bool known;
    {
      absl::ReaderMutexLock lock(&metrics_->mu_);
      known = metrics_->known_.contains(info->method());
    }
    return new Interceptor(
        metrics_,
        known ? MethodLabels(type, info->method())
              : metrics::Family::Labels{type, "unknown", "unknown"},
        info->server_context());
  }

 private:
  const GrpcServerMetrics* const metrics_;
};

GrpcServerMetrics::GrpcServerMetrics(metrics::Registry* r)
    : started_(r->AddCounter("grpc_server_started_total",
                             "Total number of RPCs started on the server.",
                             {"grpc_type", "grpc_service", "grpc_method"})),
      handled_(r->AddCounter(
          "grpc_server_handled_total",
          "Total number of RPCs completed on the server, "
          "regardless of success or failure.",
          {"grpc_type", "grpc_service", "grpc_method", "grpc_code"})),
      received_(r->AddCounter(
          "grpc_server_msg_received_total",
          "Total number of RPC stream messages received on the server.",
          {"grpc_type", "grpc_service", "grpc_method"})),
      sent_(r->AddCounter(
          "grpc_server_msg_sent_total",
          "Total number of gRPC stream messages sent by the server.",
          {"grpc_type", "grpc_service", "grpc_method"})),
      seconds_(r->AddHistogram(
          "grpc_server_handling_seconds",
          "Histogram of response latency (seconds) of gRPC that had been "
          "application-level handled by the server.",
          {"grpc_type", "grpc_service", "grpc_method"}, kBuckets)) {}

void GrpcServerMetrics::InitService(
    const google::protobuf::ServiceDescriptor& service) {
  for (int i = 0; i < service.method_count(); ++i) {
    const google::protobuf::MethodDescriptor* m = service.method(i);
    const Type type =
        m->client_streaming()
            ? (m->server_streaming() ? Type::BIDI_STREAMING
                                     : Type::CLIENT_STREAMING)
            : (m->server_streaming() ? Type::SERVER_STREAMING : Type::UNARY);
    {
      absl::MutexLock lock(&mu_);
      known_.insert(absl::StrCat("/", service.full_name(), "/", m->name()));
    }
    const metrics::Family::Labels labels = {TypeName(type), service.full_name(),
                                            m->name()};
    for (metrics::Family* f : {started_, received_, sent_, seconds_}) {
      f->Init(labels);
    }
    for (const CodeAndName& c : kAllCodes) {
      metrics::Family::Labels with_code = labels;
      with_code.push_back(c.name);
      handled_->Init(with_code);
    }
  }
}

bool GrpcServerMetrics::InitService(absl::string_view full_name) {
  const google::protobuf::ServiceDescriptor* service =
      google::protobuf::DescriptorPool::generated_pool()->FindServiceByName(
          std::string(full_name));
  if (service == nullptr) return false;
  InitService(*service);
  return true;
}

std::unique_ptr<grpc::experimental::ServerInterceptorFactoryInterface>
GrpcServerMetrics::NewInterceptorFactory() {
  return std::make_unique<Factory>(this);
}

}  // namespace tailor::server
