// Retries and errors of the remote transport (storage/http_client.h) under
// injected faults: s3:// through remote_fixture.py's fault proxy in front
// of s3rver.

#include <memory>
#include <string>

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "storage/http_client.h"
#include "storage/remote_fixture.h"
#include "storage/remote_stats.h"
#include "storage/remote_test_util.h"
#include "storage/s3_store.h"
#include "testing/temp_dir.h"

namespace tailor {
namespace {

using ::tailor::testing::FixtureServer;
using ::tailor::testing::RandomBytes;
using ::tailor::testing::RunFixture;
using ::tailor::testing::TempDir;
using ::testing::HasSubstr;

constexpr char kBucket[] = "fault-test";

class RemoteFaultsTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = new TempDir();
    absl::StatusOr<FixtureServer> s = FixtureServer::Start(
        {"s3rver", "--dir", dir_->path(), "--bucket", kBucket});
    ASSERT_TRUE(s.ok()) << s.status();
    s3rver_ = new FixtureServer(*std::move(s));
    absl::StatusOr<FixtureServer> p = FixtureServer::Start(
        {"fault", "--upstream", std::to_string(s3rver_->port())});
    ASSERT_TRUE(p.ok()) << p.status();
    proxy_ = new FixtureServer(*std::move(p));
    // The object every test reads, put by boto3 straight into s3rver.
    data_ = new std::string(RandomBytes(256 << 10, 7));
    testing::WriteFile(dir_->Join("object.bin"), *data_);
    absl::StatusOr<std::string> r =
        RunFixture({"s3", "--port", std::to_string(s3rver_->port()), "put",
                    kBucket, "object.bin", dir_->Join("object.bin")});
    ASSERT_TRUE(r.ok()) << r.status();
  }
  static void TearDownTestSuite() {
    delete proxy_;
    delete s3rver_;
    delete dir_;
    delete data_;
  }

  // A store talking to the proxy; small timeouts and backoffs.
  std::shared_ptr<S3Store> Store(int max_attempts = 4,
                                 absl::Duration stall = absl::Seconds(2)) {
    S3StoreOptions o;
    o.aws.access_key_id = "S3RVER";
    o.aws.secret_access_key = "S3RVER";
    o.aws.region = "us-east-1";
    o.aws.endpoint_url = absl::StrCat("http://127.0.0.1:", proxy_->port());
    o.part_bytes = 5 << 20;
    HttpClientOptions h;
    h.max_attempts = max_attempts;
    h.initial_backoff = absl::Milliseconds(20);
    h.stall_timeout = stall;
    h.connect_timeout = absl::Seconds(10);
    return std::make_shared<S3Store>(o, std::make_shared<HttpClient>(h));
  }
  // Sets the proxy's fault plan (remote_fixture.py fault).
  void Plan(const std::string& plan) {
    HttpClient c{HttpClientOptions{}};
    HttpRequest r;
    r.method = "POST";
    r.url = absl::StrCat("http://127.0.0.1:", proxy_->port(), "/__faults");
    r.body = plan;
    absl::StatusOr<HttpResponse> resp = c.Perform(r, "fault plan");
    ASSERT_TRUE(resp.ok() && resp->status == 200) << plan;
  }
  // Requests the proxy saw since the last Plan().
  int Count() {
    HttpClient c{HttpClientOptions{}};
    HttpRequest r;
    r.url = absl::StrCat("http://127.0.0.1:", proxy_->port(), "/__count");
    absl::StatusOr<HttpResponse> resp = c.Perform(r, "fault count");
    int n = -1;
    EXPECT_TRUE(resp.ok() && absl::SimpleAtoi(resp->body, &n));
    return n;
  }
  static ObjectUri Uri(const std::string& key) {
    return ObjectUri{"s3", kBucket, key, ""};
  }
  ObjectInfo Info() { return ObjectInfo{data_->size(), etag_}; }

  // Reads [offset, offset+length) of the object through the proxy.
  absl::Status Read(S3Store& store, uint64_t offset, uint64_t length,
                    std::string* out) {
    out->assign(length, '\0');
    return store.ReadRange(Uri("object.bin"), Info(), offset, length,
                           out->data());
  }

  void SetUp() override {
    Plan("");
    absl::StatusOr<ObjectInfo> info = Store()->Stat(Uri("object.bin"));
    ASSERT_TRUE(info.ok()) << info.status();
    etag_ = info->etag;
  }

  static TempDir* dir_;
  static FixtureServer* s3rver_;
  static FixtureServer* proxy_;
  static std::string* data_;
  std::string etag_;
};

TempDir* RemoteFaultsTest::dir_ = nullptr;
FixtureServer* RemoteFaultsTest::s3rver_ = nullptr;
FixtureServer* RemoteFaultsTest::proxy_ = nullptr;
std::string* RemoteFaultsTest::data_ = nullptr;

TEST_F(RemoteFaultsTest, ServerErrorsAreRetriedThenSucceed) {
  auto store = Store();
  Plan("503,503");
  const uint64_t retries = GlobalRemoteStats().retries.load();
  std::string out;
  absl::Status s = Read(*store, 1000, 50000, &out);
  ASSERT_TRUE(s.ok()) << s;
  EXPECT_EQ(out, data_->substr(1000, 50000));
  EXPECT_EQ(Count(), 3);
  EXPECT_EQ(GlobalRemoteStats().retries.load() - retries, 2u);
  // HEAD too.
  Plan("503");
  absl::StatusOr<ObjectInfo> info = store->Stat(Uri("object.bin"));
  ASSERT_TRUE(info.ok()) << info.status();
  EXPECT_EQ(info->size, data_->size());
  EXPECT_EQ(Count(), 2);
}

TEST_F(RemoteFaultsTest, AConnectionDroppedMidBodyIsRetried) {
  auto store = Store();
  Plan("drop");
  std::string out;
  absl::Status s = Read(*store, 0, 200000, &out);
  ASSERT_TRUE(s.ok()) << s;
  EXPECT_EQ(out, data_->substr(0, 200000));
  EXPECT_EQ(Count(), 2);
}

TEST_F(RemoteFaultsTest, AShortBodyIsRetriedThenDataLossIfItPersists) {
  auto store = Store(3);
  Plan("short");
  std::string out;
  absl::Status s = Read(*store, 10, 100000, &out);
  ASSERT_TRUE(s.ok()) << s;
  EXPECT_EQ(out, data_->substr(10, 100000));
  EXPECT_EQ(Count(), 2);

  Plan("always:short");
  const uint64_t failures = GlobalRemoteStats().failures.load();
  s = Read(*store, 10, 100000, &out);
  EXPECT_EQ(s.code(), absl::StatusCode::kDataLoss) << s;
  EXPECT_THAT(s.message(), HasSubstr("s3://fault-test/object.bin"));
  EXPECT_THAT(s.message(), HasSubstr("shorter"));
  EXPECT_EQ(Count(), 3);
  EXPECT_EQ(GlobalRemoteStats().failures.load() - failures, 1u);
}

TEST_F(RemoteFaultsTest, ASlowBodyStallsOutAndIsRetriedOrUnavailable) {
  auto store = Store(2, absl::Seconds(1));
  Plan("slow");
  std::string out;
  absl::Status s = Read(*store, 0, 100000, &out);
  ASSERT_TRUE(s.ok()) << s;
  EXPECT_EQ(out, data_->substr(0, 100000));

  Plan("always:slow");
  s = Read(*store, 0, 100000, &out);
  EXPECT_EQ(s.code(), absl::StatusCode::kUnavailable) << s;
  EXPECT_THAT(s.message(), HasSubstr("stalled"));
  EXPECT_EQ(Count(), 2);
}

TEST_F(RemoteFaultsTest, ThrottlingIsUnavailableAfterTheRetries) {
  auto store = Store(3);
  Plan("always:429");
  std::string out;
  absl::Status s = Read(*store, 0, 10, &out);
  EXPECT_EQ(s.code(), absl::StatusCode::kUnavailable) << s;
  EXPECT_THAT(s.message(), HasSubstr("throttled"));
  EXPECT_THAT(s.message(), HasSubstr("after 3 attempts"));
  EXPECT_EQ(Count(), 3);
}

TEST_F(RemoteFaultsTest, ForbiddenIsPermissionDeniedAndNotRetried) {
  auto store = Store();
  Plan("always:403");
  std::string out;
  absl::Status s = Read(*store, 0, 10, &out);
  EXPECT_EQ(s.code(), absl::StatusCode::kPermissionDenied) << s;
  EXPECT_THAT(s.message(), HasSubstr("s3://fault-test/object.bin"));
  EXPECT_EQ(Count(), 1);
}

// CompleteMultipartUpload (a POST) is not retried on a server error: the
// error is reported, the upload abandoned, no object appears.
TEST_F(RemoteFaultsTest, ACompleteIsNotRetriedBlindly) {
  auto store = Store();
  {
    auto up = store->BeginUpload(Uri("completed-once.bin"));
    ASSERT_TRUE(up.ok());
    // Create + part 1 go through; then part 2 ok, complete 503.
    ASSERT_TRUE((*up)->Append(RandomBytes((5 << 20) + 10, 8)).ok());
    Plan("ok,503");
    absl::Status s = (*up)->Commit();
    EXPECT_EQ(s.code(), absl::StatusCode::kUnavailable) << s;
    EXPECT_EQ(Count(), 2);  // part 2 once, complete once
    Plan("");
  }
  absl::StatusOr<std::string> keys =
      RunFixture({"s3", "--port", std::to_string(s3rver_->port()), "list",
                  kBucket, "completed-once"});
  ASSERT_TRUE(keys.ok());
  EXPECT_EQ(absl::StripAsciiWhitespace(*keys), "[]");
}

// A complete whose response is lost is re-sent; the server's NoSuchUpload
// then means the first one went through, which the object confirms.
TEST_F(RemoteFaultsTest, ACompleteWhoseResponseIsLostIsResentAndChecked) {
  auto store = Store();
  const std::string data = RandomBytes((5 << 20) + 99, 9);
  auto up = store->BeginUpload(Uri("completed-lost.bin"));
  ASSERT_TRUE(up.ok());
  ASSERT_TRUE((*up)->Append(data).ok());
  Plan("ok,lose");  // part 2, then the complete's response is lost
  absl::Status s = (*up)->Commit();
  ASSERT_TRUE(s.ok()) << s;
  EXPECT_EQ(Count(), 4);  // part 2, complete, complete again, HEAD
  const std::string f = dir_->Join("completed-lost.bin");
  absl::StatusOr<std::string> r =
      RunFixture({"s3", "--port", std::to_string(s3rver_->port()), "get",
                  kBucket, "completed-lost.bin", f});
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(testing::ReadFile(f), data);
}

}  // namespace
}  // namespace tailor
