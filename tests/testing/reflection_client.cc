#include "testing/reflection_client.h"

#include <chrono>
#include <memory>

#include "absl/strings/str_cat.h"
#include "google/protobuf/descriptor.h"
#include "google/protobuf/descriptor.pb.h"
#include "google/protobuf/descriptor_database.h"
#include "google/protobuf/dynamic_message.h"
#include "grpc/reflection/v1/reflection.grpc.pb.h"
#include "grpcpp/impl/client_unary_call.h"
#include "grpcpp/impl/rpc_method.h"

namespace tailor::testing {

namespace rv1 = ::grpc::reflection::v1;
namespace pb = ::google::protobuf;

namespace {

absl::Status Failed(const char* what, const grpc::Status& status) {
  return absl::Status(static_cast<absl::StatusCode>(status.error_code()),
                      absl::StrCat(what, ": ", status.error_message()));
}

}  // namespace

absl::StatusOr<ReflectionAnswers> AskReflectionV1(
    const std::shared_ptr<grpc::Channel>& channel,
    const std::vector<std::string>& symbols) {
  auto stub = rv1::ServerReflection::NewStub(channel);
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() +
                       std::chrono::seconds(60));
  auto stream = stub->ServerReflectionInfo(&context);
  ReflectionAnswers answers;
  rv1::ServerReflectionRequest request;
  rv1::ServerReflectionResponse response;
  request.set_list_services("");
  if (!stream->Write(request) || !stream->Read(&response)) {
    return Failed("list_services", stream->Finish());
  }
  for (const rv1::ServiceResponse& s :
       response.list_services_response().service()) {
    answers.services.push_back(s.name());
  }
  for (const std::string& symbol : symbols) {
    request.set_file_containing_symbol(symbol);
    if (!stream->Write(request) || !stream->Read(&response)) {
      return Failed("file_containing_symbol", stream->Finish());
    }
    if (response.original_request().file_containing_symbol() != symbol) {
      return absl::InternalError("original_request is not the request");
    }
    answers.errors.push_back(response.error_response().error_code());
    const auto& files =
        response.file_descriptor_response().file_descriptor_proto();
    answers.files.emplace_back(files.begin(), files.end());
  }
  stream->WritesDone();
  grpc::Status status = stream->Finish();
  if (!status.ok()) return Failed("finish", status);
  return answers;
}

absl::StatusOr<std::string> HealthCheckByReflection(
    const std::shared_ptr<grpc::Channel>& channel, const std::string& service) {
  absl::StatusOr<ReflectionAnswers> answers =
      AskReflectionV1(channel, {"grpc.health.v1.Health"});
  if (!answers.ok()) return answers.status();
  if (answers->errors[0] != 0) {
    return absl::NotFoundError("grpc.health.v1.Health does not resolve");
  }
  pb::SimpleDescriptorDatabase db;
  for (const std::string& bytes : answers->files[0]) {
    pb::FileDescriptorProto file;
    if (!file.ParseFromString(bytes) || !db.Add(file)) {
      return absl::DataLossError("a file descriptor does not parse");
    }
  }
  pb::DescriptorPool pool(&db);
  const pb::ServiceDescriptor* health =
      pool.FindServiceByName("grpc.health.v1.Health");
  const pb::MethodDescriptor* check =
      health != nullptr ? health->FindMethodByName("Check") : nullptr;
  if (check == nullptr) return absl::NotFoundError("no Health.Check");
  pb::DynamicMessageFactory factory(&pool);
  std::unique_ptr<pb::Message> request(
      factory.GetPrototype(check->input_type())->New());
  std::unique_ptr<pb::Message> response(
      factory.GetPrototype(check->output_type())->New());
  const pb::FieldDescriptor* field =
      check->input_type()->FindFieldByName("service");
  if (field == nullptr) return absl::NotFoundError("no request.service");
  request->GetReflection()->SetString(request.get(), field, service);
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() +
                       std::chrono::seconds(60));
  const std::string path =
      absl::StrCat("/", health->full_name(), "/", check->name());
  grpc::Status status = grpc::internal::BlockingUnaryCall(
      channel.get(),
      grpc::internal::RpcMethod(path.c_str(),
                                grpc::internal::RpcMethod::NORMAL_RPC),
      &context, *request, response.get());
  if (!status.ok()) {
    return absl::Status(static_cast<absl::StatusCode>(status.error_code()),
                        status.error_message());
  }
  const pb::FieldDescriptor* status_field =
      check->output_type()->FindFieldByName("status");
  if (status_field == nullptr) return absl::NotFoundError("no .status");
  return std::string(
      response->GetReflection()->GetEnum(*response, status_field)->name());
}

}  // namespace tailor::testing
