#ifndef TAILOR_SERVER_RPC_COUNTER_H_
#define TAILOR_SERVER_RPC_COUNTER_H_

#include <grpcpp/support/status.h>

#include <initializer_list>
#include <string>

#include "absl/status/status.h"
#include "metrics/registry.h"

namespace tailor::server {

// The outcome of every tailor.v1.FusionService call, counted in
// tailor_rpcs_total{method, code} and converted to the gRPC status the call
// ends with (server/grpc_status.h). Thread-safe; `registry` must outlive it.
class RpcCounter {
 public:
  // `methods` are exported from zero (code "ok").
  RpcCounter(metrics::Registry* registry,
             std::initializer_list<const char*> methods);

  // Counts `status` for `method` and returns it as a gRPC status.
  grpc::Status Outcome(const char* method, const absl::Status& status);

  // The code's label: "ok", "invalid_argument", ...
  static std::string CodeLabel(absl::StatusCode code);

 private:
  metrics::Family* const rpcs_;
};

}  // namespace tailor::server

#endif  // TAILOR_SERVER_RPC_COUNTER_H_
