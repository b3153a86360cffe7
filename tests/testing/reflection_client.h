#ifndef TAILOR_TESTS_TESTING_REFLECTION_CLIENT_H_
#define TAILOR_TESTS_TESTING_REFLECTION_CLIENT_H_

// A client that knows nothing of a server's protos but what
// grpc.reflection.v1 tells it, as grpcurl works: lists services, fetches
// descriptors, and calls a unary method with a message built from them.

#include <grpcpp/grpcpp.h>

#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace tailor::testing {

struct ReflectionAnswers {
  std::vector<std::string> services;  // list_services
  // Serialized FileDescriptorProtos answering file_containing_symbol for
  // each symbol asked, in order (with their dependencies).
  std::vector<std::vector<std::string>> files;
  // The error_response code per symbol (0 when resolved).
  std::vector<int> errors;
};

// One ServerReflectionInfo v1 stream: list_services, then
// file_containing_symbol for each of `symbols`.
absl::StatusOr<ReflectionAnswers> AskReflectionV1(
    const std::shared_ptr<grpc::Channel>& channel,
    const std::vector<std::string>& symbols);

// Resolves grpc.health.v1.Health through reflection v1 only, builds a
// HealthCheckRequest{service} from the descriptors it got and calls Check.
// Returns the name of the status enum value answered ("SERVING", ...).
absl::StatusOr<std::string> HealthCheckByReflection(
    const std::shared_ptr<grpc::Channel>& channel, const std::string& service);

}  // namespace tailor::testing

#endif  // TAILOR_TESTS_TESTING_REFLECTION_CLIENT_H_
