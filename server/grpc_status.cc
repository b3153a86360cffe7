#include "server/grpc_status.h"

#include <string>

#include "absl/strings/str_cat.h"

namespace tailor::server {

grpc::Status ToGrpcStatus(const absl::Status& status) {
  if (status.ok()) return grpc::Status::OK;
  absl::string_view message = status.message();
  std::string text;
  if (message.size() <= kMaxStatusMessageBytes) {
    text = std::string(message);
  } else {
    // Backstop: errors quote user values bounded (util/quote.h), but a
    // message must never reach gRPC's metadata limit. Cut at a UTF-8
    // character boundary.
    size_t cut = kMaxStatusMessageBytes;
    while (cut > 0 && (static_cast<unsigned char>(message[cut]) & 0xc0) == 0x80)
      --cut;
    text = absl::StrCat(message.substr(0, cut), "... (message truncated from ",
                        message.size(), " bytes)");
  }
  return grpc::Status(static_cast<grpc::StatusCode>(status.code()), text);
}

}  // namespace tailor::server
