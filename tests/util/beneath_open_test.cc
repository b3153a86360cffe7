#include "util/beneath_open.h"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <string>
#include <thread>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "storage/uri_resolver.h"
#include "testing/temp_dir.h"
#include "util/file_util.h"

namespace tailor {
namespace {

using ::tailor::testing::TempDir;

void Put(const std::string& path, const std::string& text) {
  ASSERT_TRUE(WriteFileAtomically(path, text).ok()) << path;
}

std::string ReadFd(int fd) {
  std::string out(64, '\0');
  const ssize_t n = ::pread(fd, out.data(), out.size(), 0);
  out.resize(n > 0 ? static_cast<size_t>(n) : 0);
  return out;
}

// Every case runs twice: with openat2 (where the kernel has it) and with
// the openat walk alone.
class BeneathOpenTest : public ::testing::TestWithParam<BeneathResolver> {
 protected:
  void SetUp() override {
    SetBeneathResolverForTesting(GetParam());
    ASSERT_EQ(::mkdir(dir_.Join("root").c_str(), 0755), 0);
    char* real = ::realpath(dir_.Join("root").c_str(), nullptr);
    ASSERT_NE(real, nullptr);
    root_ = real;
    ::free(real);
    ASSERT_EQ(::mkdir((root_ + "/blobs").c_str(), 0755), 0);
    ASSERT_EQ(::mkdir((root_ + "/snapshots").c_str(), 0755), 0);
    Put(root_ + "/blobs/abc", "inside");
    Put(dir_.Join("secret"), "outside");
  }
  void TearDown() override {
    SetBeneathResolverForTesting(BeneathResolver::kAuto);
  }

  absl::StatusOr<ScopedFd> Open(const std::string& relative) {
    return OpenUnderRoot(root_, root_ + "/" + relative, O_RDONLY, 0,
                         "tasks[0].finetuned");
  }

  TempDir dir_;
  std::string root_;
};

TEST_P(BeneathOpenTest, FollowsRelativeSymlinksThatStayInside) {
  // The Hugging Face cache layout: snapshots/<rev>/file -> ../../blobs/<sha>.
  ASSERT_EQ(::mkdir((root_ + "/snapshots/rev").c_str(), 0755), 0);
  ASSERT_EQ(::symlink("../../blobs/abc", (root_ + "/snapshots/rev/w").c_str()),
            0);
  absl::StatusOr<ScopedFd> fd = Open("snapshots/rev/w");
  ASSERT_TRUE(fd.ok()) << fd.status();
  EXPECT_EQ(ReadFd(fd->get()), "inside");
}

TEST_P(BeneathOpenTest, FollowsAbsoluteSymlinksIntoTheRoot) {
  ASSERT_EQ(::symlink((root_ + "/blobs").c_str(), (root_ + "/abs").c_str()), 0);
  absl::StatusOr<ScopedFd> fd = Open("abs/abc");
  ASSERT_TRUE(fd.ok()) << fd.status();
  EXPECT_EQ(ReadFd(fd->get()), "inside");
}

TEST_P(BeneathOpenTest, RefusesAbsoluteSymlinkOutside) {
  ASSERT_EQ(::symlink(dir_.Join("secret").c_str(), (root_ + "/evil").c_str()),
            0);
  absl::StatusOr<ScopedFd> fd = Open("evil");
  ASSERT_FALSE(fd.ok());
  EXPECT_EQ(fd.status().code(), absl::StatusCode::kPermissionDenied)
      << fd.status();
  EXPECT_TRUE(absl::StrContains(fd.status().message(), "tasks[0].finetuned"))
      << fd.status();
  EXPECT_TRUE(absl::StrContains(fd.status().message(), "leaves the allowed"))
      << fd.status();
}

TEST_P(BeneathOpenTest, RefusesDotDotThatClimbsOut) {
  absl::StatusOr<ScopedFd> direct = Open("blobs/../../secret");
  ASSERT_FALSE(direct.ok());
  EXPECT_EQ(direct.status().code(), absl::StatusCode::kPermissionDenied)
      << direct.status();
  ASSERT_EQ(::symlink("../../secret", (root_ + "/blobs/up").c_str()), 0);
  absl::StatusOr<ScopedFd> via_link = Open("blobs/up");
  ASSERT_FALSE(via_link.ok());
  EXPECT_EQ(via_link.status().code(), absl::StatusCode::kPermissionDenied)
      << via_link.status();
  EXPECT_TRUE(absl::StrContains(via_link.status().message(), "blobs/up"))
      << via_link.status();
  // A '..' that stays inside is fine.
  absl::StatusOr<ScopedFd> inside = Open("snapshots/../blobs/abc");
  ASSERT_TRUE(inside.ok()) << inside.status();
  EXPECT_EQ(ReadFd(inside->get()), "inside");
}

TEST_P(BeneathOpenTest, SymlinkLoopIsAClearError) {
  ASSERT_EQ(::symlink("b", (root_ + "/a").c_str()), 0);
  ASSERT_EQ(::symlink("a", (root_ + "/b").c_str()), 0);
  absl::StatusOr<ScopedFd> fd = Open("a");
  ASSERT_FALSE(fd.ok());
  EXPECT_EQ(fd.status().code(), absl::StatusCode::kInvalidArgument)
      << fd.status();
  EXPECT_TRUE(absl::StrContains(fd.status().message(), "ELOOP")) << fd.status();
}

TEST_P(BeneathOpenTest, LongPathsAreBoundedErrors) {
  const std::string long_component(300, 'x');
  absl::StatusOr<ScopedFd> fd = Open(long_component);
  ASSERT_FALSE(fd.ok());
  EXPECT_LT(fd.status().message().size(), 600u) << fd.status();
  std::string long_path;
  for (int i = 0; i < 1000; ++i) absl::StrAppend(&long_path, "abcd/");
  fd = Open(long_path + "f");
  ASSERT_FALSE(fd.ok());
  EXPECT_EQ(fd.status().code(), absl::StatusCode::kInvalidArgument)
      << fd.status();
  EXPECT_TRUE(absl::StrContains(fd.status().message(), "limit")) << fd.status();
  EXPECT_LT(fd.status().message().size(), 600u) << fd.status();
}

TEST_P(BeneathOpenTest, MissingFileIsNotFound) {
  absl::StatusOr<ScopedFd> fd = Open("blobs/nope");
  ASSERT_FALSE(fd.ok());
  EXPECT_EQ(fd.status().code(), absl::StatusCode::kNotFound) << fd.status();
}

TEST_P(BeneathOpenTest, MakeDirectoriesStaysInside) {
  ASSERT_TRUE(MakeDirectoriesUnderRoot(root_, root_ + "/out/a/b", "out").ok());
  struct stat st;
  ASSERT_EQ(::stat((root_ + "/out/a/b").c_str(), &st), 0);
  EXPECT_TRUE(S_ISDIR(st.st_mode));
  // Through a symlink that leaves the root: refused, nothing created.
  ASSERT_EQ(::symlink(dir_.path().c_str(), (root_ + "/away").c_str()), 0);
  absl::StatusOr<ScopedFd> made =
      MakeDirectoriesUnderRoot(root_, root_ + "/away/escaped", "out");
  ASSERT_FALSE(made.ok());
  EXPECT_EQ(made.status().code(), absl::StatusCode::kPermissionDenied)
      << made.status();
  EXPECT_NE(::stat(dir_.Join("escaped").c_str(), &st), 0);
  // An existing file on the way.
  made = MakeDirectoriesUnderRoot(root_, root_ + "/blobs/abc/sub", "out");
  ASSERT_FALSE(made.ok());
  EXPECT_EQ(made.status().code(), absl::StatusCode::kFailedPrecondition)
      << made.status();
}

TEST_P(BeneathOpenTest, RefuseModeRefusesEverySymlink) {
  ASSERT_EQ(::symlink("blobs", (root_ + "/alias").c_str()), 0);
  absl::StatusOr<ScopedFd> fd =
      OpenUnderRoot(root_, root_ + "/alias", O_RDONLY | O_DIRECTORY, 0, "out",
                    BeneathSymlinks::kRefuse);
  ASSERT_FALSE(fd.ok());
  EXPECT_EQ(fd.status().code(), absl::StatusCode::kFailedPrecondition)
      << fd.status();
  EXPECT_TRUE(absl::StrContains(fd.status().message(), "symbolic link"))
      << fd.status();
  EXPECT_TRUE(OpenUnderRoot(root_, root_ + "/blobs", O_RDONLY | O_DIRECTORY, 0,
                            "out", BeneathSymlinks::kRefuse)
                  .ok());
}

// The TOCTOU of issue #14 point 7: a thread swaps a symlink inside the root
// between an inside target and an outside one while opens run; no open may
// ever read the outside file.
TEST_P(BeneathOpenTest, SwappingSymlinkNeverYieldsTheOutsideFile) {
  ASSERT_EQ(::mkdir((root_ + "/in").c_str(), 0755), 0);
  Put(root_ + "/in/w", "inside");
  ASSERT_EQ(::mkdir(dir_.Join("out").c_str(), 0755), 0);
  Put(dir_.Join("out/w"), "outside");
  const std::string link = root_ + "/cur";
  const std::string tmp = root_ + "/cur.tmp";
  ASSERT_EQ(::symlink("in", link.c_str()), 0);
  std::atomic<bool> stop{false};
  std::thread swapper([&] {
    bool outside = false;
    while (!stop.load()) {
      outside = !outside;
      ::unlink(tmp.c_str());
      const std::string target = outside ? dir_.Join("out") : "in";
      if (::symlink(target.c_str(), tmp.c_str()) == 0) {
        ::rename(tmp.c_str(), link.c_str());
      }
    }
  });
  int inside = 0, refused = 0, leaked = 0;
  // At least 5000 opens, then on until both outcomes were seen (a loaded
  // machine may starve the swapper for a while), for at most 60 s.
  const auto deadline =
      std::chrono::steady_clock::now() + std::chrono::seconds(60);
  for (int i = 0; i < 5000 || ((inside == 0 || refused == 0) &&
                               std::chrono::steady_clock::now() < deadline);
       ++i) {
    absl::StatusOr<ScopedFd> fd = Open("cur/w");
    if (!fd.ok()) {
      ++refused;
      continue;
    }
    const std::string text = ReadFd(fd->get());
    if (text == "outside") ++leaked;
    if (text == "inside") ++inside;
  }
  stop.store(true);
  swapper.join();
  EXPECT_EQ(leaked, 0);
  EXPECT_GT(inside, 0);
  EXPECT_GT(refused, 0);
}

// Through the resolver: a path validated while it was inside, swapped for
// an outside symlink before the open, is refused.
TEST_P(BeneathOpenTest, ResolverOpenRefusesASymlinkSwappedInAfterResolve) {
  ASSERT_EQ(::mkdir((root_ + "/model").c_str(), 0755), 0);
  Put(root_ + "/model/w", "inside");
  absl::StatusOr<UriResolver> resolver = UriResolver::Create({root_});
  ASSERT_TRUE(resolver.ok()) << resolver.status();
  absl::StatusOr<std::string> path =
      resolver->ResolveExisting(root_ + "/model/w");
  ASSERT_TRUE(path.ok()) << path.status();
  ASSERT_EQ(::rename((root_ + "/model").c_str(), (root_ + "/old").c_str()), 0);
  ASSERT_EQ(::mkdir(dir_.Join("m").c_str(), 0755), 0);
  Put(dir_.Join("m/w"), "outside");
  ASSERT_EQ(::symlink(dir_.Join("m").c_str(), (root_ + "/model").c_str()), 0);
  absl::StatusOr<ScopedFd> fd = resolver->OpenForRead(*path, "pretrained");
  ASSERT_FALSE(fd.ok());
  EXPECT_EQ(fd.status().code(), absl::StatusCode::kPermissionDenied)
      << fd.status();
  EXPECT_TRUE(absl::StartsWith(fd.status().message(), "pretrained"))
      << fd.status();
}

INSTANTIATE_TEST_SUITE_P(Resolvers, BeneathOpenTest,
                         ::testing::Values(BeneathResolver::kAuto,
                                           BeneathResolver::kWalkOnly),
                         [](const auto& info) {
                           return info.param == BeneathResolver::kAuto
                                      ? std::string("Openat2")
                                      : std::string("Walk");
                         });

}  // namespace
}  // namespace tailor
