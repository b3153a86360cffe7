// ReadLocalFile (storage/read_local_file.h): a small local file, beneath the
// resolver's roots when there is one.

#include "storage/read_local_file.h"

#include <sys/stat.h>
#include <unistd.h>

#include <string>

#include "gtest/gtest.h"
#include "testing/temp_dir.h"
#include "util/file_util.h"

namespace tailor {
namespace {

using ::tailor::testing::TempDir;

class ReadLocalFileTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_EQ(::mkdir(root_.Join("in").c_str(), 0755), 0);
    ASSERT_TRUE(WriteFileAtomically(root_.Join("in/config.json"), "{}").ok());
    ASSERT_TRUE(WriteFileAtomically(outside_.Join("secret.json"), "x").ok());
  }

  TempDir root_, outside_;
};

TEST_F(ReadLocalFileTest, WithoutAResolverReadsThePath) {
  absl::StatusOr<std::string> text =
      ReadLocalFile(nullptr, outside_.Join("secret.json"), 100);
  ASSERT_TRUE(text.ok()) << text.status();
  EXPECT_EQ(*text, "x");
  EXPECT_EQ(
      ReadLocalFile(nullptr, root_.Join("in/config.json"), 1).status().code(),
      absl::StatusCode::kInvalidArgument);
}

TEST_F(ReadLocalFileTest, WithAResolverStaysBeneathItsRoots) {
  absl::StatusOr<UriResolver> resolver =
      UriResolver::Create({root_.Join("in")});
  ASSERT_TRUE(resolver.ok()) << resolver.status();
  absl::StatusOr<std::string> text =
      ReadLocalFile(&*resolver, root_.Join("in/config.json"), 100);
  ASSERT_TRUE(text.ok()) << text.status();
  EXPECT_EQ(*text, "{}");

  // Outside the roots, directly or through a link inside them.
  const std::string secret = outside_.Join("secret.json");
  EXPECT_EQ(ReadLocalFile(&*resolver, secret, 100).status().code(),
            absl::StatusCode::kPermissionDenied);
  ASSERT_EQ(::symlink(secret.c_str(), root_.Join("in/link.json").c_str()), 0);
  const absl::Status linked =
      ReadLocalFile(&*resolver, root_.Join("in/link.json"), 100).status();
  EXPECT_EQ(linked.code(), absl::StatusCode::kPermissionDenied) << linked;
  // The limit holds as without a resolver.
  EXPECT_EQ(ReadLocalFile(&*resolver, root_.Join("in/config.json"), 1)
                .status()
                .code(),
            absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace tailor
