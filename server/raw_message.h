#ifndef TAILOR_SERVER_RAW_MESSAGE_H_
#define TAILOR_SERVER_RAW_MESSAGE_H_

// Messages of raw-registered gRPC methods (bytes in, bytes out): the service
// parses requests itself so that a request protobuf refuses (invalid UTF-8
// in a string field) is INVALID_ARGUMENT naming the field, not the callback
// API's bare UNIMPLEMENTED, and serializes its responses itself.

#include <grpcpp/support/byte_buffer.h>

#include "absl/status/status.h"
#include "google/protobuf/message.h"

namespace tailor::server {

// Parses the request bytes in `buffer` into `out` with api::ParseMessage:
// errors are INVALID_ARGUMENT naming the field and the rule broken.
absl::Status ParseRequest(const grpc::ByteBuffer& buffer,
                          google::protobuf::Message* out);

// Replaces the contents of `out` with the wire bytes of `message`. INTERNAL
// if protobuf cannot serialize it. `out` must not be in a write in flight.
absl::Status SerializeResponse(const google::protobuf::Message& message,
                               grpc::ByteBuffer* out);

}  // namespace tailor::server

#endif  // TAILOR_SERVER_RAW_MESSAGE_H_
