// Issue #10, requests a client cannot be trusted with, against a real
// tailord: invalid UTF-8 in string fields (point 19: INVALID_ARGUMENT naming
// the field, logfmt logging), echoed values bounded so errors stay under
// gRPC's metadata limit (point 19), and a FIFO named as an input refused at
// create (point 11). Torch-free: inputs are written by hand.

#include <grpcpp/generic/generic_stub.h>
#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>
#include <sys/stat.h>

#include <chrono>
#include <future>
#include <string>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "tailor/v1/fusion_service.grpc.pb.h"
#include "testing/tailord_process.h"
#include "testing/temp_dir.h"

namespace tailor {
namespace {

namespace v1 = ::tailor::v1;
using ::tailor::testing::TailordProcess;
using ::tailor::testing::TempDir;

constexpr char kMarker[] = "@@MARKER@@";

class HostileRequestTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ::mkdir(tmp_.Join("base").c_str(), 0755);
    server_ = std::make_unique<TailordProcess>(
        tmp_.Join("data"),
        std::vector<std::string>{"--allowed-root", tmp_.path()}, tmp_.path());
    ASSERT_TRUE(server_->ok()) << server_->Log();
    channel_ = grpc::CreateChannel(server_->address(),
                                   grpc::InsecureChannelCredentials());
    stub_ = v1::FusionService::NewStub(channel_);
  }

  v1::CreateFusionJobRequest Request() {
    v1::CreateFusionJobRequest request;
    v1::FusionJobSpec* spec = request.mutable_spec();
    spec->set_pretrained(tmp_.Join("base"));
    spec->add_tasks()->set_finetuned(tmp_.Join("base"));
    spec->set_report(tmp_.Join("r.json"));
    spec->set_device("cpu");
    return request;
  }

  // Sends `wire` (a serialized CreateFusionJobRequest, possibly not one
  // protobuf would write) as a raw call.
  grpc::Status CreateRaw(const std::string& wire) {
    grpc::GenericStub generic(channel_);
    grpc::ClientContext context;
    context.set_deadline(std::chrono::system_clock::now() +
                         std::chrono::seconds(60));
    grpc::Slice slice(wire);
    grpc::ByteBuffer request(&slice, 1), response;
    std::promise<grpc::Status> done;
    generic.UnaryCall(&context, "/tailor.v1.FusionService/CreateFusionJob",
                      grpc::StubOptions(), &request, &response,
                      [&](grpc::Status s) { done.set_value(std::move(s)); });
    return done.get_future().get();
  }

  // The request with kMarker in one string field replaced by invalid UTF-8
  // of the same length (so the wire lengths stay right).
  static std::string WithInvalidUtf8(const v1::CreateFusionJobRequest& r) {
    std::string wire = r.SerializeAsString();
    const size_t at = wire.find(kMarker);
    EXPECT_NE(at, std::string::npos);
    wire[at] = '\xff';
    wire[at + 1] = '\xfe';
    return wire;
  }

  grpc::Status Create(const v1::CreateFusionJobRequest& request) {
    grpc::ClientContext context;
    context.set_deadline(std::chrono::system_clock::now() +
                         std::chrono::seconds(60));
    v1::FusionJob job;
    return stub_->CreateFusionJob(&context, request, &job);
  }

  TempDir tmp_;
  std::unique_ptr<TailordProcess> server_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<v1::FusionService::Stub> stub_;
};

TEST_F(HostileRequestTest, InvalidUtf8IsInvalidArgumentNamingTheField) {
  // The wire bytes of a valid request are accepted through the raw path.
  v1::CreateFusionJobRequest ok = Request();
  EXPECT_TRUE(CreateRaw(ok.SerializeAsString()).ok());

  v1::CreateFusionJobRequest r = Request();
  r.mutable_spec()->mutable_tasks(0)->set_finetuned(
      absl::StrCat(tmp_.Join("base"), kMarker));
  grpc::Status s = CreateRaw(WithInvalidUtf8(r));
  EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT)
      << s.error_code() << " " << s.error_message();
  EXPECT_TRUE(absl::StartsWith(s.error_message(),
                               "spec.tasks[0].finetuned: is not valid UTF-8"))
      << s.error_message();

  r = Request();
  r.mutable_spec()->add_include("ok");
  r.mutable_spec()->add_include(absl::StrCat("x", kMarker));
  s = CreateRaw(WithInvalidUtf8(r));
  EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_TRUE(absl::StartsWith(s.error_message(), "spec.include[1]: "))
      << s.error_message();

  r = Request();
  (*r.mutable_labels())["team"] = kMarker;
  s = CreateRaw(WithInvalidUtf8(r));
  EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_TRUE(absl::StartsWith(s.error_message(), "labels[0].value: "))
      << s.error_message();

  // Bytes that are no message at all.
  s = CreateRaw(std::string("\x0a\xff\xff\xff\xff\x0f", 6));
  EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_TRUE(absl::StrContains(s.error_message(), "cannot be parsed"))
      << s.error_message();

  // Every line tailord wrote is logfmt (libprotobuf's complaint included).
  for (absl::string_view line :
       absl::StrSplit(server_->Log(), '\n', absl::SkipEmpty())) {
    EXPECT_TRUE(absl::StartsWith(line, "time=")) << line;
  }
}

TEST_F(HostileRequestTest, HugeValuesGetBoundedInvalidArgument) {
  v1::CreateFusionJobRequest r = Request();
  r.mutable_spec()->set_pretrained(std::string(60000, 'u'));
  grpc::Status s = Create(r);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT)
      << s.error_code() << " " << s.error_message().substr(0, 200);
  EXPECT_TRUE(absl::StrContains(s.error_message(), "pretrained"));
  EXPECT_LT(s.error_message().size(), 1000u);

  // A 50 KB filter (under --max-spec-bytes) reaches validation; it used to
  // be echoed whole, twice.
  r = Request();
  r.mutable_spec()->add_include(std::string(50000, '('));
  s = Create(r);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT)
      << s.error_code() << " " << s.error_message().substr(0, 200);
  EXPECT_TRUE(absl::StrContains(s.error_message(), "include[0]"));
  EXPECT_LT(s.error_message().size(), 1000u);
  // 100 KB is over the spec size limit: refused as such, also bounded.
  r = Request();
  r.mutable_spec()->add_include(std::string(100000, '('));
  s = Create(r);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED)
      << s.error_code() << " " << s.error_message().substr(0, 200);
  EXPECT_LT(s.error_message().size(), 1000u);

  r = Request();
  r.mutable_spec()->set_threads(1000000);
  s = Create(r);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_TRUE(absl::StrContains(s.error_message(), "threads"))
      << s.error_message();
}

TEST_F(HostileRequestTest, FifoNamedAsAnInputIsRefusedAtCreate) {
  const std::string fifo = tmp_.Join("ft.safetensors");
  ASSERT_EQ(::mkfifo(fifo.c_str(), 0644), 0);
  v1::CreateFusionJobRequest r = Request();
  r.mutable_spec()->mutable_tasks(0)->set_finetuned(fifo);
  grpc::Status s = Create(r);  // 60 s deadline: a hang is a failure
  EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT)
      << s.error_code() << " " << s.error_message();
  EXPECT_TRUE(absl::StrContains(s.error_message(), "(FIFO)"))
      << s.error_message();
}

}  // namespace
}  // namespace tailor
