#ifndef TAILOR_SERVER_GRPC_STATUS_H_
#define TAILOR_SERVER_GRPC_STATUS_H_

#include <grpcpp/support/status.h>

#include "absl/status/status.h"

namespace tailor::server {

// The one place where the core's absl::Status becomes a gRPC status: same
// canonical code (the numbering is shared), same message.
grpc::Status ToGrpcStatus(const absl::Status& status);

}  // namespace tailor::server

#endif  // TAILOR_SERVER_GRPC_STATUS_H_
