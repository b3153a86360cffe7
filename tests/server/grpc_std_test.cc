// The standard gRPC parts of tailord on an in-process server: the
// grpc_server_* metrics interceptor and grpc.reflection.v1 (issue #15
// points 6 and 7).

#include <grpcpp/generic/async_generic_service.h>
#include <grpcpp/grpcpp.h>
#include <grpcpp/health_check_service_interface.h>
#include <grpcpp/impl/client_unary_call.h>
#include <grpcpp/impl/rpc_method.h>
#include <gtest/gtest.h>

#include <chrono>
#include <thread>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "google/protobuf/descriptor.pb.h"
#include "grpc/health/v1/health.grpc.pb.h"
#include "metrics/registry.h"
#include "server/grpc_server_metrics.h"
#include "server/reflection_v1.h"
#include "testing/reflection_client.h"

namespace tailor::server {
namespace {

namespace health = ::grpc::health::v1;

constexpr char kCheckLabels[] =
    "grpc_type=\"unary\",grpc_service=\"grpc.health.v1.Health\","
    "grpc_method=\"Check\"";
constexpr char kWatchLabels[] =
    "grpc_type=\"server_stream\",grpc_service=\"grpc.health.v1.Health\","
    "grpc_method=\"Watch\"";

// A server with gRPC's health service, the metrics interceptor and (when
// asked) reflection v1.
class GrpcStdTest : public ::testing::Test {
 protected:
  void StartServer(bool reflection) {
    grpc::EnableDefaultHealthCheckService(true);
    grpc::ServerBuilder builder;
    if (reflection) builder.SetOption(std::make_unique<ReflectionV1Option>());
    std::vector<
        std::unique_ptr<grpc::experimental::ServerInterceptorFactoryInterface>>
        interceptors;
    interceptors.push_back(metrics_.NewInterceptorFactory());
    builder.experimental().SetInterceptorCreators(std::move(interceptors));
    EXPECT_TRUE(metrics_.InitService("grpc.health.v1.Health"));
    if (reflection) {
      EXPECT_TRUE(metrics_.InitService("grpc.reflection.v1.ServerReflection"));
    }
    // Some service of the server's own (tailord: FusionService) polls its
    // completion queue; gRPC's health service alone does not.
    builder.RegisterCallbackGenericService(&generic_);
    int port = 0;
    builder.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(),
                             &port);
    server_ = builder.BuildAndStart();
    ASSERT_NE(server_, nullptr);
    server_->GetHealthCheckService()->SetServingStatus("tailor.v1.X", true);
    channel_ = grpc::CreateChannel(absl::StrCat("127.0.0.1:", port),
                                   grpc::InsecureChannelCredentials());
  }
  void TearDown() override {
    if (server_) server_->Shutdown(std::chrono::system_clock::now());
  }

  grpc::Status Check(const std::string& service) {
    auto stub = health::Health::NewStub(channel_);
    grpc::ClientContext context;
    context.set_deadline(std::chrono::system_clock::now() +
                         std::chrono::seconds(60));
    health::HealthCheckRequest request;
    request.set_service(service);
    health::HealthCheckResponse response;
    return stub->Check(&context, request, &response);
  }

  bool Has(const std::string& line) const {
    return absl::StrContains(registry_.Render(), line + "\n");
  }
  // Polls for `line` (a cancelled RPC is counted when the server sees it
  // end): generous for a loaded machine.
  bool HasSoon(const std::string& line) const {
    const auto deadline =
        std::chrono::steady_clock::now() + std::chrono::seconds(60);
    while (!Has(line)) {
      if (std::chrono::steady_clock::now() > deadline) return false;
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    return true;
  }

  metrics::Registry registry_;
  GrpcServerMetrics metrics_{&registry_};
  grpc::CallbackGenericService generic_;  // UNIMPLEMENTED for anything
  std::unique_ptr<grpc::Server> server_;
  std::shared_ptr<grpc::Channel> channel_;
};

TEST(GrpcServerMetricsTest, CodeNamesAreThoseOfGoGrpcPrometheus) {
  EXPECT_STREQ(GrpcServerMetrics::CodeName(grpc::OK), "OK");
  EXPECT_STREQ(GrpcServerMetrics::CodeName(grpc::CANCELLED), "Canceled");
  EXPECT_STREQ(GrpcServerMetrics::CodeName(grpc::NOT_FOUND), "NotFound");
  EXPECT_STREQ(GrpcServerMetrics::CodeName(grpc::UNAUTHENTICATED),
               "Unauthenticated");
  EXPECT_STREQ(GrpcServerMetrics::CodeName(static_cast<grpc::StatusCode>(99)),
               "Unknown");
}

TEST(GrpcServerMetricsTest, InitServiceExportsEveryMethodAndCodeAtZero) {
  metrics::Registry registry;
  GrpcServerMetrics metrics(&registry);
  EXPECT_FALSE(metrics.InitService("no.such.Service"));
  // Linked into this test through health.grpc.pb.cc.
  ASSERT_TRUE(metrics.InitService("grpc.health.v1.Health"));
  const std::string text = registry.Render();
  for (const char* labels : {kCheckLabels, kWatchLabels}) {
    for (const char* family :
         {"grpc_server_started_total", "grpc_server_msg_received_total",
          "grpc_server_msg_sent_total", "grpc_server_handling_seconds_count"}) {
      EXPECT_TRUE(
          absl::StrContains(text, absl::StrCat(family, "{", labels, "} 0\n")))
          << family << labels;
    }
    for (const char* code :
         {"OK", "Canceled", "NotFound", "Internal", "Unavailable",
          "Unauthenticated", "DeadlineExceeded", "ResourceExhausted"}) {
      EXPECT_TRUE(absl::StrContains(
          text, absl::StrCat("grpc_server_handled_total{", labels,
                             ",grpc_code=\"", code, "\"} 0\n")))
          << code;
    }
  }
  // 2 methods x 17 codes.
  size_t handled = 0;
  for (size_t at = 0; (at = text.find("\ngrpc_server_handled_total{", at)) !=
                      std::string::npos;
       ++at) {
    ++handled;
  }
  EXPECT_EQ(handled, 34u);
}

TEST_F(GrpcStdTest, CountsStartedHandledByCodeMessagesAndLatency) {
  StartServer(/*reflection=*/false);
  ASSERT_TRUE(Check("").ok());
  ASSERT_TRUE(Check("tailor.v1.X").ok());
  EXPECT_EQ(Check("no.such.Service").error_code(), grpc::NOT_FOUND);
  EXPECT_TRUE(
      HasSoon(absl::StrCat("grpc_server_started_total{", kCheckLabels, "} 3")));
  EXPECT_TRUE(HasSoon(absl::StrCat("grpc_server_handled_total{", kCheckLabels,
                                   ",grpc_code=\"OK\"} 2")));
  EXPECT_TRUE(HasSoon(absl::StrCat("grpc_server_handled_total{", kCheckLabels,
                                   ",grpc_code=\"NotFound\"} 1")));
  EXPECT_TRUE(HasSoon(absl::StrCat("grpc_server_handling_seconds_count{",
                                   kCheckLabels, "} 3")));
  EXPECT_TRUE(HasSoon(absl::StrCat("grpc_server_handling_seconds_bucket{",
                                   kCheckLabels, ",le=\"+Inf\"} 3")));
  EXPECT_TRUE(HasSoon(
      absl::StrCat("grpc_server_msg_received_total{", kCheckLabels, "} 3")));
  EXPECT_TRUE(
      HasSoon(absl::StrCat("grpc_server_msg_sent_total{", kCheckLabels, "} 2")))
      << registry_.Render();
}

// Method names are the client's: one it makes up must not become a series.
TEST_F(GrpcStdTest, UnknownMethodsCountAsUnknown) {
  StartServer(/*reflection=*/false);
  for (const char* path : {"/made.Up/Method1", "/made.Up/Method2",
                           "/grpc.health.v1.Health/Nope"}) {
    grpc::ClientContext context;
    context.set_deadline(std::chrono::system_clock::now() +
                         std::chrono::seconds(60));
    health::HealthCheckRequest request;
    health::HealthCheckResponse response;
    grpc::Status status = grpc::internal::BlockingUnaryCall(
        channel_.get(),
        grpc::internal::RpcMethod(path, grpc::internal::RpcMethod::NORMAL_RPC),
        &context, request, &response);
    EXPECT_EQ(status.error_code(), grpc::UNIMPLEMENTED) << path;
  }
  // gRPC sees an unregistered method as a bidi stream.
  const std::string unknown =
      "grpc_type=\"bidi_stream\",grpc_service=\"unknown\","
      "grpc_method=\"unknown\"";
  EXPECT_TRUE(
      HasSoon(absl::StrCat("grpc_server_started_total{", unknown, "} 3")));
  EXPECT_TRUE(HasSoon(absl::StrCat("grpc_server_handled_total{", unknown,
                                   ",grpc_code=\"Unimplemented\"} 3")));
  const std::string text = registry_.Render();
  EXPECT_FALSE(absl::StrContains(text, "made.Up")) << text;
  EXPECT_FALSE(absl::StrContains(text, "Method1"));
  EXPECT_FALSE(absl::StrContains(text, "\"Nope\""));
}

TEST_F(GrpcStdTest, AStreamTheClientCancelsIsHandledAsCanceled) {
  StartServer(/*reflection=*/false);
  auto stub = health::Health::NewStub(channel_);
  {
    grpc::ClientContext context;
    context.set_deadline(std::chrono::system_clock::now() +
                         std::chrono::seconds(60));
    health::HealthCheckRequest request;
    request.set_service("tailor.v1.X");
    auto reader = stub->Watch(&context, request);
    health::HealthCheckResponse response;
    ASSERT_TRUE(reader->Read(&response));
    EXPECT_EQ(response.status(), health::HealthCheckResponse::SERVING);
    EXPECT_TRUE(HasSoon(
        absl::StrCat("grpc_server_started_total{", kWatchLabels, "} 1")));
    EXPECT_FALSE(Has(absl::StrCat("grpc_server_handled_total{", kWatchLabels,
                                  ",grpc_code=\"Canceled\"} 1")));
    context.TryCancel();
    reader->Finish();
  }
  EXPECT_TRUE(HasSoon(absl::StrCat("grpc_server_handled_total{", kWatchLabels,
                                   ",grpc_code=\"Canceled\"} 1")))
      << registry_.Render();
  EXPECT_TRUE(HasSoon(
      absl::StrCat("grpc_server_msg_sent_total{", kWatchLabels, "} 1")));
}

TEST_F(GrpcStdTest, ReflectionV1ListsAndResolvesAndAClientCallsCheckByIt) {
  StartServer(/*reflection=*/true);
  absl::StatusOr<testing::ReflectionAnswers> answers = testing::AskReflectionV1(
      channel_, {"grpc.health.v1.Health", "grpc.health.v1.Health.Check",
                 "grpc.health.v1.HealthCheckResponse.ServingStatus",
                 "grpc.reflection.v1.ServerReflection", "no.such.Symbol"});
  ASSERT_TRUE(answers.ok()) << answers.status();
  EXPECT_NE(std::find(answers->services.begin(), answers->services.end(),
                      "grpc.health.v1.Health"),
            answers->services.end());
  EXPECT_NE(std::find(answers->services.begin(), answers->services.end(),
                      "grpc.reflection.v1.ServerReflection"),
            answers->services.end());
  const std::vector<std::string> want_file = {
      "grpc/health/v1/health.proto", "grpc/health/v1/health.proto",
      "grpc/health/v1/health.proto", "grpc/reflection/v1/reflection.proto"};
  for (size_t i = 0; i < want_file.size(); ++i) {
    EXPECT_EQ(answers->errors[i], 0) << i;
    ASSERT_FALSE(answers->files[i].empty()) << i;
    google::protobuf::FileDescriptorProto file;
    ASSERT_TRUE(file.ParseFromString(answers->files[i][0]));
    EXPECT_EQ(file.name(), want_file[i]);
  }
  EXPECT_EQ(answers->errors[4], grpc::NOT_FOUND);
  EXPECT_TRUE(answers->files[4].empty());

  absl::StatusOr<std::string> serving =
      testing::HealthCheckByReflection(channel_, "tailor.v1.X");
  ASSERT_TRUE(serving.ok()) << serving.status();
  EXPECT_EQ(*serving, "SERVING");
  server_->GetHealthCheckService()->SetServingStatus("tailor.v1.X", false);
  serving = testing::HealthCheckByReflection(channel_, "tailor.v1.X");
  ASSERT_TRUE(serving.ok()) << serving.status();
  EXPECT_EQ(*serving, "NOT_SERVING");
  EXPECT_EQ(testing::HealthCheckByReflection(channel_, "nope").status().code(),
            absl::StatusCode::kNotFound);
}

TEST_F(GrpcStdTest, WithoutTheOptionThereIsNoReflectionV1) {
  StartServer(/*reflection=*/false);
  absl::StatusOr<testing::ReflectionAnswers> answers =
      testing::AskReflectionV1(channel_, {});
  EXPECT_EQ(answers.status().code(), absl::StatusCode::kUnimplemented)
      << answers.status();
}

}  // namespace
}  // namespace tailor::server
