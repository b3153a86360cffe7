// Remote allowed roots and remote reads through UriResolver (issue #16
// points 2, 5), over the in-memory store.

#include <memory>
#include <string>

#include "absl/strings/match.h"
#include "gtest/gtest.h"
#include "io/safetensors_file.h"
#include "storage/remote_byte_source.h"
#include "storage/remote_roots.h"
#include "storage/uri_resolver.h"
#include "testing/memory_object_store.h"
#include "testing/temp_dir.h"

namespace tailor {
namespace {

using testing::MemoryObjectStore;
using testing::MemoryStoreProvider;
using testing::TempDir;

class RemoteResolverTest : public ::testing::Test {
 protected:
  UriResolver Resolver(std::vector<std::string> roots) {
    UriResolver::Remote remote;
    remote.provider = std::make_shared<MemoryStoreProvider>(store_);
    return UriResolver::Create(roots, {}, remote).value();
  }
  std::shared_ptr<MemoryObjectStore> store_ =
      std::make_shared<MemoryObjectStore>();
  TempDir tmp_;
};

TEST(RemoteRootsTest, MatchesComponentWise) {
  RemoteRoots roots = RemoteRoots::Create({"s3://bkt/pre"}).value();
  auto admits = [&](const std::string& uri) {
    return roots.Admits(ParseObjectUri(uri).value());
  };
  EXPECT_TRUE(admits("s3://bkt/pre"));
  EXPECT_TRUE(admits("s3://bkt/pre/"));
  EXPECT_TRUE(admits("s3://bkt/pre/x/y.safetensors"));
  EXPECT_FALSE(admits("s3://bkt/prefix2/x"));
  EXPECT_FALSE(admits("s3://bkt/pr"));
  EXPECT_FALSE(admits("s3://other/pre/x"));
  EXPECT_FALSE(admits("https://bkt/pre/x"));
  RemoteRoots whole = RemoteRoots::Create({"s3://bkt/"}).value();
  EXPECT_TRUE(whole.Admits(ParseObjectUri("s3://bkt/any/thing").value()));
  EXPECT_FALSE(RemoteRoots::Create({"/local"}).ok());
}

TEST_F(RemoteResolverTest, RemoteUriOutsideTheRootsIsPermissionDenied) {
  store_->Put("s3://bkt/other/model.safetensors", "x");
  UriResolver resolver = Resolver({"s3://bkt/pre/"});
  for (const char* uri : {"s3://bkt/other/model.safetensors",
                          "s3://bkt/prefix2/x", "s3://zzz/pre/x"}) {
    absl::StatusOr<std::string> r = resolver.ResolveExisting(uri);
    ASSERT_EQ(r.status().code(), absl::StatusCode::kPermissionDenied) << uri;
    EXPECT_TRUE(
        absl::StrContains(r.status().message(), "outside the allowed roots"))
        << r.status();
    EXPECT_EQ(resolver.ResolveForWrite(uri).status().code(),
              absl::StatusCode::kPermissionDenied);
  }
  // A '..' (encoded or not) never reaches the root check.
  EXPECT_EQ(
      resolver.ResolveExisting("s3://bkt/pre/%2e%2e/other/x").status().code(),
      absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(resolver.ResolveExisting("s3://bkt/pre/../other/x").status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST_F(RemoteResolverTest, NoRemoteRootMeansPermissionDenied) {
  store_->Put("s3://bkt/pre/a", "x");
  UriResolver resolver = Resolver({tmp_.path()});
  EXPECT_EQ(resolver.ResolveExisting("s3://bkt/pre/a").status().code(),
            absl::StatusCode::kPermissionDenied);
  EXPECT_EQ(resolver.CheckLocalPath("s3://bkt/pre/a").status().code(),
            absl::StatusCode::kPermissionDenied);
}

TEST_F(RemoteResolverTest, NoProviderIsUnimplementedNotConfigured) {
  UriResolver resolver = UriResolver::Create({"s3://bkt/pre/"}, {}, {}).value();
  absl::StatusOr<std::string> r = resolver.ResolveExisting("s3://bkt/pre/a");
  ASSERT_EQ(r.status().code(), absl::StatusCode::kUnimplemented);
  EXPECT_TRUE(
      absl::StrContains(r.status().message(), "remote storage not configured"))
      << r.status();
}

TEST_F(RemoteResolverTest, ResolvesObjectsAndPrefixes) {
  store_->Put("s3://bkt/pre/model/model.safetensors", "x");
  UriResolver resolver = Resolver({"s3://bkt/pre/"});
  EXPECT_EQ(
      resolver.ResolveExisting("s3://bkt/pre/model/model.safetensors").value(),
      "s3://bkt/pre/model/model.safetensors");
  EXPECT_EQ(resolver.ResolveExisting("s3://bkt/pre/model").value(),
            "s3://bkt/pre/model/");
  EXPECT_EQ(resolver.ResolveExisting("s3://bkt/pre/model/").value(),
            "s3://bkt/pre/model/");
  EXPECT_TRUE(resolver.PathIsDirectory("s3://bkt/pre/model/"));
  EXPECT_TRUE(
      resolver.PathIsRegularFile("s3://bkt/pre/model/model.safetensors"));
  EXPECT_EQ(resolver.ListNames("s3://bkt/pre/model/").value(),
            std::vector<std::string>{"model.safetensors"});
  EXPECT_EQ(resolver.ResolveExisting("s3://bkt/pre/missing").status().code(),
            absl::StatusCode::kNotFound);
  EXPECT_EQ(resolver.ResolveForWrite("s3://bkt/pre/out/").value(),
            "s3://bkt/pre/out");
}

TEST_F(RemoteResolverTest, ReadFileKeepsTheSizeCap) {
  store_->Put("s3://bkt/pre/config.json", std::string(100, 'x'));
  UriResolver resolver = Resolver({"s3://bkt/pre/"});
  EXPECT_EQ(resolver.ReadFile("s3://bkt/pre/config.json", 100).value().size(),
            100u);
  absl::StatusOr<std::string> big =
      resolver.ReadFile("s3://bkt/pre/config.json", 99, "config");
  ASSERT_EQ(big.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(absl::StrContains(big.status().message(), "the limit is 99"))
      << big.status();
}

TEST_F(RemoteResolverTest, StoreErrorsPassThrough) {
  store_->Put("s3://bkt/pre/m.safetensors", "x");
  store_->FailReads("s3://bkt/pre/m", absl::PermissionDeniedError("403"));
  UriResolver resolver = Resolver({"s3://bkt/pre/"});
  EXPECT_EQ(
      resolver.ResolveExisting("s3://bkt/pre/m.safetensors").status().code(),
      absl::StatusCode::kPermissionDenied);
  store_->FailReads("s3://bkt/pre/m", absl::UnavailableError("503"));
  EXPECT_EQ(resolver.OpenSource("s3://bkt/pre/m.safetensors").status().code(),
            absl::StatusCode::kUnavailable);
}

std::string Safetensors(size_t data_bytes) {
  const std::string header =
      "{\"w\":{\"dtype\":\"U8\",\"shape\":[" + std::to_string(data_bytes) +
      "],\"data_offsets\":[0," + std::to_string(data_bytes) + "]}}";
  std::string out(8, '\0');
  for (int i = 0; i < 8; ++i) out[i] = char((header.size() >> (8 * i)) & 0xff);
  out += header;
  for (size_t i = 0; i < data_bytes; ++i) out.push_back(char(i * 7));
  return out;
}

TEST_F(RemoteResolverTest, HeaderIsReadWithoutTheTensorBytes) {
  const size_t n = 8 << 20;
  store_->Put("s3://bkt/pre/big.safetensors", Safetensors(n));
  UriResolver resolver = Resolver({"s3://bkt/pre/"});
  store_->ResetCounters();
  auto source = resolver.OpenSource("s3://bkt/pre/big.safetensors").value();
  auto file = SafetensorsFile::Open(std::move(source)).value();
  EXPECT_EQ(file->header().tensors.size(), 1u);
  EXPECT_LT(store_->bytes_served(), 256u << 10) << "header read was not ranged";
  // The tensor's bytes arrive intact, through the window.
  std::string got(n, '\0');
  ASSERT_TRUE(file->ReadRaw(file->header().tensors[0], got.data()).ok());
  for (size_t i = 0; i < n; i += 4097) ASSERT_EQ(got[i], char(i * 7)) << i;
}

TEST_F(RemoteResolverTest, HeaderIsValidatedAgainstTheObjectSize) {
  std::string bytes = Safetensors(64);
  bytes.resize(bytes.size() - 1);  // the data is one byte short
  store_->Put("s3://bkt/pre/short.safetensors", bytes);
  UriResolver resolver = Resolver({"s3://bkt/pre/"});
  auto source = resolver.OpenSource("s3://bkt/pre/short.safetensors").value();
  absl::StatusOr<std::unique_ptr<SafetensorsFile>> file =
      SafetensorsFile::Open(std::move(source));
  ASSERT_EQ(file.status().code(), absl::StatusCode::kInvalidArgument)
      << file.status();
  EXPECT_TRUE(absl::StrContains(file.status().message(),
                                "s3://bkt/pre/short.safetensors"))
      << file.status();
}

TEST_F(RemoteResolverTest, AChangedObjectIsNeverMixed) {
  store_->Put("s3://bkt/pre/m", std::string(1 << 20, 'a'));
  const ObjectUri uri = ParseObjectUri("s3://bkt/pre/m").value();
  const ObjectInfo info = store_->Stat(uri).value();
  auto source = NewRemoteByteSource(store_, uri, info, 64 << 10);
  char buffer[16];
  ASSERT_TRUE(source->ReadAt(0, sizeof(buffer), buffer).ok());
  store_->Put("s3://bkt/pre/m", std::string(1 << 20, 'b'));
  absl::Status s = source->ReadAt(900 << 10, sizeof(buffer), buffer);
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition) << s;
  EXPECT_EQ(source->ReadAt((1 << 20) - 8, 16, buffer).code(),
            absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace tailor
