// https:// against Debian nginx on loopback with a CA made by openssl
// (storage/https_store.h), through NewRemoteStoreProvider.

#include "storage/https_store.h"

#include <stdlib.h>
#include <sys/stat.h>

#include <memory>
#include <string>

#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "storage/remote_fixture.h"
#include "storage/remote_stats.h"
#include "storage/remote_store_provider.h"
#include "storage/remote_test_util.h"
#include "testing/temp_dir.h"

namespace tailor {
namespace {

using ::tailor::testing::FixtureServer;
using ::tailor::testing::MapEnv;
using ::tailor::testing::RandomBytes;
using ::tailor::testing::RunFixture;
using ::tailor::testing::TempDir;
using ::testing::HasSubstr;

class HttpsStoreTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = new TempDir();
    // nginx's workers drop to an unprivileged user when started as root.
    ASSERT_EQ(chmod(dir_->path().c_str(), 0755), 0);
    absl::StatusOr<std::string> ca =
        RunFixture({"ca", "--dir", dir_->Join("pki")});
    ASSERT_TRUE(ca.ok()) << ca.status();
    ASSERT_EQ(mkdir(dir_->Join("www").c_str(), 0755), 0);
    ASSERT_EQ(mkdir(dir_->Join("www/models").c_str(), 0755), 0);
    data_ = new std::string(RandomBytes(300000, 11));
    testing::WriteFile(dir_->Join("www/models/weights.bin"), *data_);
    ASSERT_EQ(chmod(dir_->Join("www/models/weights.bin").c_str(), 0644), 0);
    absl::StatusOr<FixtureServer> s = FixtureServer::Start(
        {"nginx", "--root", dir_->Join("www"), "--cert",
         dir_->Join("pki/server.pem"), "--key", dir_->Join("pki/server.key")});
    ASSERT_TRUE(s.ok()) << s.status();
    nginx_ = new FixtureServer(*std::move(s));
  }
  static void TearDownTestSuite() {
    delete nginx_;
    delete dir_;
    delete data_;
  }

  static std::shared_ptr<ObjectStore> Store(const std::string& ca_file) {
    RemoteOptions o;
    o.ca_file = ca_file;
    o.max_attempts = 2;
    o.initial_backoff = absl::Milliseconds(10);
    auto provider = NewRemoteStoreProvider(o, MapEnv({}));
    EXPECT_TRUE(provider.ok()) << provider.status();
    auto store = (*provider)->StoreFor(ObjectUri{"https", "h", "k", ""});
    EXPECT_TRUE(store.ok());
    return *store;
  }
  static ObjectUri Uri(const std::string& key) {
    absl::StatusOr<ObjectUri> u = ParseObjectUri(
        absl::StrCat("https://127.0.0.1:", nginx_->port(), "/", key));
    EXPECT_TRUE(u.ok()) << u.status();
    return *u;
  }

  static TempDir* dir_;
  static FixtureServer* nginx_;
  static std::string* data_;
};

TempDir* HttpsStoreTest::dir_ = nullptr;
FixtureServer* HttpsStoreTest::nginx_ = nullptr;
std::string* HttpsStoreTest::data_ = nullptr;

TEST_F(HttpsStoreTest, RangedReadsWithTheCaFile) {
  auto store = Store(dir_->Join("pki/ca.pem"));
  absl::StatusOr<ObjectInfo> info = store->Stat(Uri("models/weights.bin"));
  ASSERT_TRUE(info.ok()) << info.status();
  EXPECT_EQ(info->size, data_->size());
  EXPECT_FALSE(info->etag.empty());
  std::string out(1234, '\0');
  const uint64_t before = GlobalRemoteStats().read_bytes.load();
  absl::Status s = store->ReadRange(Uri("models/weights.bin"), *info, 77777,
                                    out.size(), out.data());
  ASSERT_TRUE(s.ok()) << s;
  EXPECT_EQ(out, data_->substr(77777, 1234));
  EXPECT_EQ(GlobalRemoteStats().read_bytes.load() - before, out.size());
  // Missing: NOT_FOUND; read-only: PERMISSION_DENIED; no listing.
  EXPECT_EQ(store->Stat(Uri("models/missing.bin")).status().code(),
            absl::StatusCode::kNotFound);
  EXPECT_EQ(store->BeginUpload(Uri("models/new.bin")).status().code(),
            absl::StatusCode::kPermissionDenied);
  EXPECT_EQ(store->Delete(Uri("models/weights.bin")).code(),
            absl::StatusCode::kPermissionDenied);
  EXPECT_EQ(store->List(Uri("models/")).status().code(),
            absl::StatusCode::kUnimplemented);
}

TEST_F(HttpsStoreTest, SslCertFileIsTrustedWhenNoCaFileIsGiven) {
  const char* old = getenv("SSL_CERT_FILE");
  const std::string saved = old != nullptr ? old : "";
  setenv("SSL_CERT_FILE", dir_->Join("pki/ca.pem").c_str(), 1);
  auto store = Store("");
  absl::StatusOr<ObjectInfo> info = store->Stat(Uri("models/weights.bin"));
  EXPECT_TRUE(info.ok()) << info.status();
  if (old != nullptr) {
    setenv("SSL_CERT_FILE", saved.c_str(), 1);
  } else {
    unsetenv("SSL_CERT_FILE");
  }
}

TEST_F(HttpsStoreTest, AWrongCaIsAClearTlsError) {
  auto store = Store(dir_->Join("pki/other-ca.pem"));
  absl::StatusOr<ObjectInfo> info = store->Stat(Uri("models/weights.bin"));
  ASSERT_EQ(info.status().code(), absl::StatusCode::kFailedPrecondition)
      << info.status();
  EXPECT_THAT(info.status().message(), HasSubstr("TLS verification failed"));
  EXPECT_THAT(info.status().message(), HasSubstr("other-ca.pem"));
  EXPECT_THAT(info.status().message(),
              HasSubstr(Uri("models/weights.bin").ToString()));
  // An unreadable --ca-file is refused at creation.
  RemoteOptions o;
  o.ca_file = dir_->Join("pki/none.pem");
  auto provider = NewRemoteStoreProvider(o, MapEnv({}));
  EXPECT_EQ(provider.status().code(), absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace tailor
