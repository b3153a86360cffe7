#include "server/raw_message.h"

#include <grpcpp/impl/codegen/proto_utils.h>
#include <grpcpp/support/slice.h>

#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "api/wire_parse.h"

namespace tailor::server {

absl::Status ParseRequest(const grpc::ByteBuffer& buffer,
                          google::protobuf::Message* out) {
  std::vector<grpc::Slice> slices;
  if (!buffer.Dump(&slices).ok()) {
    return absl::InvalidArgumentError("request: unreadable message");
  }
  std::string bytes;
  for (const grpc::Slice& s : slices) {
    bytes.append(reinterpret_cast<const char*>(s.begin()), s.size());
  }
  return api::ParseMessage(bytes, out);
}

absl::Status SerializeResponse(const google::protobuf::Message& message,
                               grpc::ByteBuffer* out) {
  out->Clear();  // the writer wants an empty buffer
  bool own = false;
  const grpc::Status wrote =
      grpc::SerializationTraits<google::protobuf::Message>::Serialize(
          message, out, &own);
  if (!wrote.ok()) {
    return absl::InternalError(
        absl::StrCat("serializing the response: ", wrote.error_message()));
  }
  return absl::OkStatus();
}

}  // namespace tailor::server
