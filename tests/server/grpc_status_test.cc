// The absl -> gRPC status conversion: same code, message capped (issue #10
// point 19: a 100 KB message exceeded gRPC's metadata limit).

#include "server/grpc_status.h"

#include <gtest/gtest.h>

#include <string>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"

namespace tailor::server {
namespace {

TEST(GrpcStatusTest, SameCodeAndMessage) {
  EXPECT_TRUE(ToGrpcStatus(absl::OkStatus()).ok());
  grpc::Status s = ToGrpcStatus(absl::NotFoundError("x: missing"));
  EXPECT_EQ(s.error_code(), grpc::StatusCode::NOT_FOUND);
  EXPECT_EQ(s.error_message(), "x: missing");
}

TEST(GrpcStatusTest, LongMessagesAreCutAtACharacterBoundary) {
  // 'é' is two bytes: the cut must not split one.
  std::string message = "a";
  while (message.size() < 100000) message += "\xc3\xa9";
  grpc::Status s = ToGrpcStatus(absl::InvalidArgumentError(message));
  EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_LE(s.error_message().size(), kMaxStatusMessageBytes + 100);
  EXPECT_TRUE(absl::EndsWith(
      s.error_message(),
      absl::StrCat("... (message truncated from ", message.size(), " bytes)")))
      << s.error_message().substr(s.error_message().size() - 80);
  const size_t cut = s.error_message().find("...");
  EXPECT_EQ(cut % 2, 1u);  // "a" then whole 2-byte characters
  EXPECT_EQ(s.error_message().substr(0, cut), message.substr(0, cut));
}

}  // namespace
}  // namespace tailor::server
