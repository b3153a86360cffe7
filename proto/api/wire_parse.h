#ifndef TAILOR_PROTO_API_WIRE_PARSE_H_
#define TAILOR_PROTO_API_WIRE_PARSE_H_

// Parsing a request message from its wire bytes with errors a client can act
// on. gRPC's own parse (protobuf) refuses a proto3 `string` field holding
// invalid UTF-8, and the callback API then answers UNIMPLEMENTED with an
// empty message; parsing here instead gives INVALID_ARGUMENT naming the
// field.

#include "absl/status/status.h"
#include "absl/strings/string_view.h"
#include "google/protobuf/message.h"

namespace tailor::api {

// Parses `bytes` into `out` (cleared first). Errors are INVALID_ARGUMENT:
// "<field path>: is not valid UTF-8 (byte N); string fields must be UTF-8"
// (e.g. "spec.tasks[0].finetuned") when a string field is the reason, else
// "request: cannot be parsed as <message type>".
absl::Status ParseMessage(absl::string_view bytes,
                          google::protobuf::Message* out);

}  // namespace tailor::api

#endif  // TAILOR_PROTO_API_WIRE_PARSE_H_
