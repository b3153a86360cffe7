#ifndef TAILOR_SERVER_GRPC_SERVER_METRICS_H_
#define TAILOR_SERVER_GRPC_SERVER_METRICS_H_

// gRPC server metrics in the shape of go-grpc-prometheus (the grpc-ecosystem
// interceptors most dashboards and alerts are written for):
//
//   grpc_server_started_total{grpc_type,grpc_service,grpc_method}
//   grpc_server_handled_total{grpc_type,grpc_service,grpc_method,grpc_code}
//   grpc_server_msg_received_total{grpc_type,grpc_service,grpc_method}
//   grpc_server_msg_sent_total{grpc_type,grpc_service,grpc_method}
//   grpc_server_handling_seconds{grpc_type,grpc_service,grpc_method}
//     (histogram, Prometheus' default buckets 5 ms .. 10 s)
//
// grpc_type is unary, client_stream, server_stream or bidi_stream;
// grpc_code is the Go name of the status code (OK, Canceled, NotFound,
// InvalidArgument, ...). Every RPC of every service of the server is
// counted (FusionService, health, reflection) by a server interceptor: once
// when it starts, once when it ends with the status sent; as Canceled when
// the client cancelled or went away (whatever status the handler then
// sends, or none). Handling time runs from
// the start of the call to its status.

#include <memory>
#include <string>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_set.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "grpcpp/support/server_interceptor.h"
#include "metrics/registry.h"

namespace google::protobuf {
class ServiceDescriptor;
}

namespace tailor::server {

class GrpcServerMetrics {
 public:
  // Registers the families on `registry`, which must outlive this.
  explicit GrpcServerMetrics(metrics::Registry* registry);

  // Exports every method of `service` at zero, for every code, as
  // go-grpc-prometheus' InitializeMetrics does: a rate of failures then
  // has a series before the first failure. Only the methods of services
  // given here are counted under their names; a call of any other method
  // (the name is the client's choice) counts as grpc_service="unknown",
  // grpc_method="unknown", so no client can grow the series. Call before
  // the server starts.
  void InitService(const google::protobuf::ServiceDescriptor& service);
  // The same by full name from the generated descriptor pool; false when
  // the pool has no such service.
  bool InitService(absl::string_view full_name);

  // A factory for grpc::ServerBuilder::experimental().
  // SetInterceptorCreators; it refers to this object, which must outlive
  // the server.
  std::unique_ptr<grpc::experimental::ServerInterceptorFactoryInterface>
  NewInterceptorFactory();

  // The label value of a status code ("OK", "NotFound", ...).
  static const char* CodeName(grpc::StatusCode code);

 private:
  class Interceptor;
  class Factory;

  metrics::Family* const started_;
  metrics::Family* const handled_;
  metrics::Family* const received_;
  metrics::Family* const sent_;
  metrics::Family* const seconds_;
  mutable absl::Mutex mu_;  // guards known_
  // "/package.Service/Method" of the services given to InitService.
  absl::flat_hash_set<std::string> known_ ABSL_GUARDED_BY(mu_);
};

}  // namespace tailor::server

#endif  // TAILOR_SERVER_GRPC_SERVER_METRICS_H_
