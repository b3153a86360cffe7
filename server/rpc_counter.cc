#include "server/rpc_counter.h"

#include "absl/strings/ascii.h"
#include "server/grpc_status.h"

namespace tailor::server {

RpcCounter::RpcCounter(metrics::Registry* registry,
                       std::initializer_list<const char*> methods)
    : rpcs_(registry->AddCounter("tailor_rpcs_total",
                                 "gRPC calls handled, by method and status "
                                 "code.",
                                 {"method", "code"})) {
  for (const char* method : methods) {
    rpcs_->Init({method, CodeLabel(absl::StatusCode::kOk)});
  }
}

grpc::Status RpcCounter::Outcome(const char* method,
                                 const absl::Status& status) {
  rpcs_->Increment({method, CodeLabel(status.code())});
  return ToGrpcStatus(status);
}

std::string RpcCounter::CodeLabel(absl::StatusCode code) {
  return absl::AsciiStrToLower(absl::StatusCodeToString(code));
}

}  // namespace tailor::server
