#ifndef TAILOR_SERVER_GRPC_STATUS_H_
#define TAILOR_SERVER_GRPC_STATUS_H_

#include <grpcpp/support/status.h>

#include <cstddef>

#include "absl/status/status.h"

namespace tailor::server {

// Longest status message sent to a client (well under gRPC's default 8 KiB
// metadata limit).
inline constexpr size_t kMaxStatusMessageBytes = 4096;

// The one place where the core's absl::Status becomes a gRPC status: same
// canonical code (the numbering is shared), same message, cut to
// kMaxStatusMessageBytes (with "... (message truncated from N bytes)").
grpc::Status ToGrpcStatus(const absl::Status& status);

}  // namespace tailor::server

#endif  // TAILOR_SERVER_GRPC_STATUS_H_
