#ifndef TAILOR_SERVER_REFLECTION_V1_H_
#define TAILOR_SERVER_REFLECTION_V1_H_

// gRPC server reflection, grpc.reflection.v1 (Debian's libgrpc++_reflection
// serves only grpc.reflection.v1alpha; the protocol is the same under a new
// package name). Answers from the process's generated descriptor pool, as
// gRPC's v1alpha service does: every service, message and file compiled
// into tailord, including grpc.health.v1 (compiled from Debian's grpc-proto:
// proto/CMakeLists.txt), so that a reflection-only client such as grpcurl
// can call Health.Check.

#include <memory>
#include <set>
#include <string>
#include <vector>

#include "grpc/reflection/v1/reflection.grpc.pb.h"
#include "grpcpp/impl/server_builder_option.h"

namespace google::protobuf {
class DescriptorPool;
class FileDescriptor;
}  // namespace google::protobuf

namespace tailor::server {

// The service. Thread-safe.
class ReflectionV1Service final
    : public ::grpc::reflection::v1::ServerReflection::Service {
 public:
  ReflectionV1Service();

  // The names list_services answers; null: none. Must outlive the service.
  void SetServiceList(const std::vector<std::string>* services) {
    services_ = services;
  }

  grpc::Status ServerReflectionInfo(
      grpc::ServerContext* context,
      grpc::ServerReaderWriter<::grpc::reflection::v1::ServerReflectionResponse,
                               ::grpc::reflection::v1::ServerReflectionRequest>*
          stream) override;

 private:
  // Adds `file` and its transitive dependencies not in *sent to *response.
  static void AddFiles(const google::protobuf::FileDescriptor* file,
                       std::set<std::string>* sent,
                       ::grpc::reflection::v1::ServerReflectionResponse* out);
  grpc::Status Answer(const ::grpc::reflection::v1::ServerReflectionRequest& in,
                      std::set<std::string>* sent,
                      ::grpc::reflection::v1::ServerReflectionResponse* out);

  const google::protobuf::DescriptorPool* const pool_;
  // Set before the server starts (ServerBuilder::BuildAndStart), read-only
  // after.
  const std::vector<std::string>* services_ = nullptr;
};

// A ServerBuilder option that adds the v1 reflection service to the server
// with the server's own list of services (as gRPC's v1alpha plugin does):
//   builder.SetOption(std::make_unique<ReflectionV1Option>());
class ReflectionV1Option final : public grpc::ServerBuilderOption {
 public:
  void UpdateArguments(grpc::ChannelArguments*) override {}
  void UpdatePlugins(std::vector<std::unique_ptr<grpc::ServerBuilderPlugin>>*
                         plugins) override;
};

}  // namespace tailor::server

#endif  // TAILOR_SERVER_REFLECTION_V1_H_
