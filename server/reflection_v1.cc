#include "server/reflection_v1.h"

#include <grpcpp/impl/server_builder_plugin.h>
#include <grpcpp/impl/server_initializer.h>

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "google/protobuf/descriptor.h"
#include "google/protobuf/descriptor.pb.h"
#include "grpc/health/v1/health.pb.h"

namespace tailor::server {
namespace {

namespace rv1 = ::grpc::reflection::v1;

// Names in error messages are the client's: bounded.
std::string Quote(const std::string& s) {
  return absl::StrCat("'", s.size() > 200 ? s.substr(0, 200) + "..." : s, "'");
}

class Plugin final : public grpc::ServerBuilderPlugin {
 public:
  std::string name() override { return "tailor_reflection_v1"; }
  void InitServer(grpc::ServerInitializer* si) override {
    si->RegisterService(service_);
  }
  void Finish(grpc::ServerInitializer* si) override {
    service_->SetServiceList(si->GetServiceList());
  }
  void ChangeArguments(const std::string&, void*) override {}
  bool has_sync_methods() const override { return true; }

 private:
  std::shared_ptr<ReflectionV1Service> service_ =
      std::make_shared<ReflectionV1Service>();
};

}  // namespace

ReflectionV1Service::ReflectionV1Service()
    : pool_(google::protobuf::DescriptorPool::generated_pool()) {
  // Links grpc/health/v1/health.pb.cc into the binary (its descriptor
  // registers only when the object file is linked) and builds it.
  ::grpc::health::v1::HealthCheckResponse::descriptor();
}

void ReflectionV1Service::AddFiles(const google::protobuf::FileDescriptor* file,
                                   std::set<std::string>* sent,
                                   rv1::ServerReflectionResponse* out) {
  if (!sent->insert(file->name()).second) return;
  google::protobuf::FileDescriptorProto proto;
  file->CopyTo(&proto);
  proto.SerializeToString(
      out->mutable_file_descriptor_response()->add_file_descriptor_proto());
  for (int i = 0; i < file->dependency_count(); ++i) {
    AddFiles(file->dependency(i), sent, out);
  }
}

grpc::Status ReflectionV1Service::Answer(const rv1::ServerReflectionRequest& in,
                                         std::set<std::string>* sent,
                                         rv1::ServerReflectionResponse* out) {
  using Request = rv1::ServerReflectionRequest;
  switch (in.message_request_case()) {
    case Request::kListServices: {
      rv1::ListServiceResponse* list = out->mutable_list_services_response();
      if (services_ != nullptr) {
        for (const std::string& name : *services_) {
          list->add_service()->set_name(name);
        }
      }
      return grpc::Status::OK;
    }
    case Request::kFileByFilename: {
      const google::protobuf::FileDescriptor* file =
          pool_->FindFileByName(in.file_by_filename());
      if (file == nullptr) {
        return grpc::Status(grpc::NOT_FOUND,
                            absl::StrCat("file_by_filename: no file ",
                                         Quote(in.file_by_filename())));
      }
      AddFiles(file, sent, out);
      return grpc::Status::OK;
    }
    case Request::kFileContainingSymbol: {
      const google::protobuf::FileDescriptor* file =
          pool_->FindFileContainingSymbol(in.file_containing_symbol());
      if (file == nullptr) {
        return grpc::Status(grpc::NOT_FOUND,
                            absl::StrCat("file_containing_symbol: no symbol ",
                                         Quote(in.file_containing_symbol())));
      }
      AddFiles(file, sent, out);
      return grpc::Status::OK;
    }
    case Request::kFileContainingExtension: {
      const rv1::ExtensionRequest& e = in.file_containing_extension();
      const google::protobuf::Descriptor* type =
          pool_->FindMessageTypeByName(e.containing_type());
      if (type == nullptr) {
        return grpc::Status(
            grpc::NOT_FOUND,
            absl::StrCat("file_containing_extension: no message type ",
                         Quote(e.containing_type())));
      }
      const google::protobuf::FieldDescriptor* field =
          pool_->FindExtensionByNumber(type, e.extension_number());
      if (field == nullptr) {
        return grpc::Status(
            grpc::NOT_FOUND,
            absl::StrCat("file_containing_extension: no extension ",
                         e.extension_number(), " of ",
                         Quote(e.containing_type())));
      }
      AddFiles(field->file(), sent, out);
      return grpc::Status::OK;
    }
    case Request::kAllExtensionNumbersOfType: {
      const google::protobuf::Descriptor* type =
          pool_->FindMessageTypeByName(in.all_extension_numbers_of_type());
      if (type == nullptr) {
        return grpc::Status(
            grpc::NOT_FOUND,
            absl::StrCat("all_extension_numbers_of_type: no message type ",
                         Quote(in.all_extension_numbers_of_type())));
      }
      std::vector<const google::protobuf::FieldDescriptor*> extensions;
      pool_->FindAllExtensions(type, &extensions);
      rv1::ExtensionNumberResponse* numbers =
          out->mutable_all_extension_numbers_response();
      numbers->set_base_type_name(type->full_name());
      for (const google::protobuf::FieldDescriptor* f : extensions) {
        numbers->add_extension_number(f->number());
      }
      return grpc::Status::OK;
    }
    case Request::MESSAGE_REQUEST_NOT_SET:
      break;
  }
  return grpc::Status(grpc::UNIMPLEMENTED,
                      "message_request: not set, or a kind this server does "
                      "not know");
}

grpc::Status ReflectionV1Service::ServerReflectionInfo(
    grpc::ServerContext*,
    grpc::ServerReaderWriter<rv1::ServerReflectionResponse,
                             rv1::ServerReflectionRequest>* stream) {
  rv1::ServerReflectionRequest request;
  while (stream->Read(&request)) {
    // Each answer carries its file's transitive dependencies, whatever this
    // stream sent before (as gRPC's v1alpha service does).
    std::set<std::string> sent;
    rv1::ServerReflectionResponse response;
    grpc::Status status = Answer(request, &sent, &response);
    if (!status.ok()) {
      response.clear_message_response();
      rv1::ErrorResponse* error = response.mutable_error_response();
      error->set_error_code(status.error_code());
      error->set_error_message(status.error_message());
    }
    response.set_valid_host(request.host());
    *response.mutable_original_request() = request;
    if (!stream->Write(response)) break;
  }
  return grpc::Status::OK;
}

void ReflectionV1Option::UpdatePlugins(
    std::vector<std::unique_ptr<grpc::ServerBuilderPlugin>>* plugins) {
  plugins->push_back(std::make_unique<Plugin>());
}

}  // namespace tailor::server
