#include "util/file_util.h"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/stat.h>

#include "absl/strings/match.h"
#include "testing/fifo.h"
#include "testing/test_util.h"

namespace tailor {
namespace {

using ::tailor::testing::TempDir;

TEST(FileUtilTest, WriteFileAtomicallyReplacesWholeFile) {
  TempDir dir;
  const std::string path = dir.Join("f.json");
  ASSERT_TRUE(WriteFileAtomically(path, "first version").ok());
  ASSERT_TRUE(WriteFileAtomically(path, "second").ok());
  EXPECT_EQ(*ReadFileToString(path, 1024), "second");
  EXPECT_EQ(ListDirectory(dir.path())->size(), 1u) << "temp file left behind";
}

TEST(FileUtilTest, WriteFileAtomicallyFailsCleanlyInMissingDirectory) {
  TempDir dir;
  absl::Status s = WriteFileAtomically(dir.Join("no/such/f"), "x");
  EXPECT_EQ(s.code(), absl::StatusCode::kNotFound) << s;
}

TEST(FileUtilTest, ReadFileToStringEnforcesLimit) {
  TempDir dir;
  ASSERT_TRUE(WriteFileAtomically(dir.Join("f"), std::string(100, 'x')).ok());
  auto r = ReadFileToString(dir.Join("f"), 99);
  EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(ReadFileToString(dir.Join("f"), 100).ok());
}

TEST(FileUtilTest, PReadFullyReportsTruncation) {
  TempDir dir;
  ASSERT_TRUE(WriteFileAtomically(dir.Join("f"), "abc").ok());
  auto fd = OpenForRead(dir.Join("f"));
  ASSERT_TRUE(fd.ok());
  char buf[8];
  absl::Status s = PReadFully(fd->get(), buf, 8, 0, "f");
  EXPECT_EQ(s.code(), absl::StatusCode::kDataLoss);
  EXPECT_TRUE(absl::StrContains(s.message(), "end of file"));
}

TEST(FileUtilTest, RemoveAllRemovesTreesAndIgnoresMissing) {
  TempDir dir;
  const std::string root = dir.Join("a");
  ASSERT_EQ(::mkdir(root.c_str(), 0755), 0);
  ASSERT_EQ(::mkdir(JoinPath(root, "b").c_str(), 0755), 0);
  ASSERT_TRUE(WriteFileAtomically(JoinPath(root, "b/c"), "x").ok());
  EXPECT_TRUE(RemoveAll(root).ok());
  EXPECT_FALSE(PathExists(root));
  EXPECT_TRUE(RemoveAll(root).ok());
}

TEST(FileUtilTest, PathHelpers) {
  EXPECT_EQ(Dirname("/a/b/c"), "/a/b");
  EXPECT_EQ(Dirname("/a"), "/");
  EXPECT_EQ(Dirname("a"), ".");
  EXPECT_EQ(Dirname("a/b/"), "a");
  EXPECT_EQ(Basename("/a/b/c"), "c");
  EXPECT_EQ(Basename("a/b/"), "b");
  EXPECT_EQ(JoinPath("a", "b"), "a/b");
  EXPECT_EQ(JoinPath("a/", "b"), "a/b");
  EXPECT_EQ(JoinPath("a", "/b"), "/b");
}

// Issue #10 point 11: a FIFO named as an input blocked open(2) for ever.
TEST(FileUtilTest, OpenForReadRefusesAFifoWithoutBlocking) {
  TempDir dir;
  const std::string fifo = dir.Join("weights.safetensors");
  ::tailor::testing::MakeFifoOrDie(fifo);
  absl::Status s = ::tailor::testing::RunWithFifoGuard(
      fifo, [&] { return OpenForRead(fifo).status(); });
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
  EXPECT_TRUE(absl::StrContains(s.message(), "is not a regular file (FIFO)"))
      << s;
  s = ::tailor::testing::RunWithFifoGuard(
      fifo, [&] { return ReadFileToString(fifo, 1024).status(); });
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
  // Directories and devices are refused the same way.
  EXPECT_TRUE(absl::StrContains(OpenForRead(dir.path()).status().message(),
                                "(directory)"));
  EXPECT_TRUE(absl::StrContains(OpenForRead("/dev/null").status().message(),
                                "(character device)"));
}

TEST(FileUtilTest, OpenForReadReturnsABlockingDescriptor) {
  TempDir dir;
  const std::string path = dir.Join("f");
  ASSERT_TRUE(WriteFileAtomically(path, "contents").ok());
  auto fd = OpenForRead(path);
  ASSERT_TRUE(fd.ok()) << fd.status();
  const int flags = ::fcntl(fd->get(), F_GETFL);
  EXPECT_EQ(flags & O_NONBLOCK, 0);
  EXPECT_NE(::fcntl(fd->get(), F_GETFD) & FD_CLOEXEC, 0);
}

}  // namespace
}  // namespace tailor
