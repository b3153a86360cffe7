#include "util/staged_output.h"

#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include "absl/strings/match.h"
#include "testing/temp_dir.h"
#include "util/file_util.h"

namespace tailor {
namespace {

using ::tailor::testing::TempDir;

std::string Slurp(const std::string& path) {
  auto s = ReadFileToString(path, 1 << 20);
  return s.ok() ? *s : "<" + std::string(s.status().message()) + ">";
}

void Put(const std::string& path, const std::string& text) {
  ASSERT_TRUE(WriteFileAtomically(path, text).ok());
}

absl::Status Fill(StagedOutput& o, const std::string& text) {
  return PWriteFully(o.fd(), text.data(), text.size(), 0, o.staging_path());
}

TEST(StagingNameTest, RecognisesOnlyTailorStagingOfTheNamedOutput) {
  EXPECT_TRUE(IsStagingNameFor(".out.tailor-stage-1-0", "out"));
  EXPECT_TRUE(
      IsStagingNameFor(".p.safetensors.tailor-spool-12-3", "p.safetensors"));
  EXPECT_TRUE(IsStagingNameFor(".out.partial-1-22", "out"));
  EXPECT_TRUE(IsStagingNameFor(".r.json.tmp-7-0", "r.json"));
  EXPECT_FALSE(IsStagingNameFor(".out.partial-1-22", "ou"));
  EXPECT_FALSE(IsStagingNameFor(".out.partial-1-x", "out"));
  EXPECT_FALSE(IsStagingNameFor(".out.partial-1", "out"));
  EXPECT_FALSE(IsStagingNameFor("out.partial-1-2", "out"));
  EXPECT_FALSE(IsStagingNameFor(".out.backup-1-2", "out"));
  EXPECT_TRUE(absl::StartsWith(StagingName("x", "stage"), ".x.tailor-stage-"));
  EXPECT_TRUE(IsStagingNameFor(StagingName("x", "spool"), "x"));
}

TEST(StagedOutputTest, FileIsPublishedOrRolledBack) {
  TempDir dir;
  const std::string path = dir.Join("r.json");
  Put(path, "old");
  EXPECT_EQ(StagedOutput::Create(path, StagedOutput::Kind::kFile, false)
                .status()
                .code(),
            absl::StatusCode::kAlreadyExists);
  auto o = StagedOutput::Create(path, StagedOutput::Kind::kFile, true);
  ASSERT_TRUE(o.ok()) << o.status();
  ASSERT_TRUE(Fill(**o, "new").ok());
  EXPECT_EQ(Slurp(path), "old");
  ASSERT_TRUE((*o)->Publish().ok());
  EXPECT_EQ(Slurp(path), "new");
  ASSERT_TRUE((*o)->Rollback().ok());
  EXPECT_EQ(Slurp(path), "old");
  o->reset();
  EXPECT_EQ(*ListDirectory(dir.path()), std::vector<std::string>({"r.json"}));

  o = StagedOutput::Create(path, StagedOutput::Kind::kFile, true);
  ASSERT_TRUE(o.ok());
  ASSERT_TRUE(Fill(**o, "newer").ok());
  StagedOutput* all[] = {o->get()};
  ASSERT_TRUE(PublishAll(all).ok());
  o->reset();
  EXPECT_EQ(Slurp(path), "newer");
  EXPECT_EQ(*ListDirectory(dir.path()), std::vector<std::string>({"r.json"}));
}

TEST(StagedOutputTest, WrongKindIsNeverReplaced) {
  TempDir dir;
  ASSERT_EQ(::mkdir(dir.Join("d").c_str(), 0755), 0);
  EXPECT_EQ(StagedOutput::Create(dir.Join("d"), StagedOutput::Kind::kFile, true)
                .status()
                .code(),
            absl::StatusCode::kFailedPrecondition);
  ASSERT_EQ(::symlink("d", dir.Join("link").c_str()), 0);
  EXPECT_EQ(StagedOutput::Create(dir.Join("link"),
                                 StagedOutput::Kind::kDirectory, true)
                .status()
                .code(),
            absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(StagedOutput::Create(dir.Join("missing/x"),
                                 StagedOutput::Kind::kFile, false)
                .status()
                .code(),
            absl::StatusCode::kNotFound);
}

TEST(StagedOutputTest, OpenDirectoryNoFollowRefusesSymlinks) {
  TempDir dir;
  ASSERT_EQ(::mkdir(dir.Join("real").c_str(), 0755), 0);
  ASSERT_EQ(::symlink(dir.Join("real").c_str(), dir.Join("link").c_str()), 0);
  EXPECT_TRUE(OpenDirectoryNoFollow(dir.Join("real")).ok());
  EXPECT_EQ(OpenDirectoryNoFollow(dir.Join("link")).status().code(),
            absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(OpenDirectoryNoFollow(dir.Join("nope")).status().code(),
            absl::StatusCode::kNotFound);
}

// Issue #14 point 7: RemoveStaleStaging opens its directory refusing every
// symlink, so a parent swapped for a symlink (after the output was resolved)
// cannot make it delete a staging-like file elsewhere.
TEST(StagedOutputTest, StaleStagingCleanupNeverFollowsASwappedParent) {
  TempDir dir;
  const std::string victim_dir = dir.Join("elsewhere/out-parent");
  ASSERT_TRUE(MakeDirectories(victim_dir).ok());
  const std::string victim = JoinPath(victim_dir, ".out.tailor-stage-1-0");
  Put(victim, "not tailor's to delete");
  // The job's output directory was dir/job/out-parent; `job` is now a
  // symlink to `elsewhere`, and then out-parent itself too.
  ASSERT_EQ(::symlink(dir.Join("elsewhere").c_str(), dir.Join("job").c_str()),
            0);
  EXPECT_EQ(RemoveStaleStaging(dir.Join("job/out-parent"), {"out"}), 0);
  EXPECT_EQ(Slurp(victim), "not tailor's to delete");
  ASSERT_EQ(::symlink(victim_dir.c_str(), dir.Join("swapped").c_str()), 0);
  EXPECT_EQ(RemoveStaleStaging(dir.Join("swapped"), {"out"}), 0);
  EXPECT_EQ(Slurp(victim), "not tailor's to delete");
  // The same entry at its real location is stale (no writer holds it) and
  // removed: the refusals above are the symlinks'.
  EXPECT_EQ(RemoveStaleStaging(victim_dir, {"out"}), 1);
  EXPECT_FALSE(PathExists(victim));
}

}  // namespace
}  // namespace tailor
