// Started multipart uploads are recorded in the scratch directory and a
// dead writer's are aborted, with its staging removed, by the next start
// (util/upload_record.h, issue #16 point 3).

#include "util/upload_record.h"

#include <sys/wait.h>
#include <unistd.h>

#include <memory>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_split.h"
#include "gtest/gtest.h"
#include "storage/uri_resolver.h"
#include "testing/memory_object_store.h"
#include "testing/temp_dir.h"
#include "util/file_util.h"
#include "util/staged_output.h"

namespace tailor {
namespace {

using testing::MemoryObjectStore;
using testing::MemoryStoreProvider;
using testing::TempDir;

class UploadRecordTest : public ::testing::Test {
 protected:
  UploadRecordTest() {
    UriResolver::Remote remote;
    remote.provider = provider_;
    remote.scratch_dir = tmp_.Join("scratch");
    resolver_ = std::make_unique<UriResolver>(
        UriResolver::Create({"s3://bkt/out/"}, {}, remote).value());
  }
  // A remote directory output with two staged files, uploaded (not
  // committed).
  std::unique_ptr<StagedOutput> Uploaded(const std::string& uri) {
    auto o = CreateStagedOutput(uri, StagedOutput::Kind::kDirectory, false,
                                resolver_.get());
    EXPECT_TRUE(o.ok()) << o.status();
    if (!o.ok()) return nullptr;
    EXPECT_TRUE(WriteFileAtomically(
                    JoinPath((*o)->staging_path(), "a.safetensors"), "shard")
                    .ok());
    EXPECT_TRUE(
        WriteFileAtomically(JoinPath((*o)->staging_path(), "config.json"), "{}")
            .ok());
    EXPECT_TRUE((*o)->Upload().ok());
    return *std::move(o);
  }
  // Names in the scratch directory ending in `suffix`.
  std::vector<std::string> Entries(const std::string& suffix) {
    std::vector<std::string> out;
    absl::StatusOr<std::vector<std::string>> names =
        ListDirectory(tmp_.Join("scratch"));
    if (!names.ok()) return out;
    for (const std::string& n : *names) {
      if (absl::EndsWith(n, suffix)) out.push_back(n);
    }
    return out;
  }
  std::vector<std::string> RecordLines() {
    std::vector<std::string> lines;
    for (const std::string& r : Entries(".tailor-uploads")) {
      std::string text =
          ReadFileToString(JoinPath(tmp_.Join("scratch"), r), 1 << 20)
              .value_or("");
      for (absl::string_view l :
           absl::StrSplit(text, '\n', absl::SkipEmpty())) {
        lines.emplace_back(l);
      }
    }
    return lines;
  }

  std::shared_ptr<MemoryObjectStore> store_ =
      std::make_shared<MemoryObjectStore>();
  std::shared_ptr<MemoryStoreProvider> provider_ =
      std::make_shared<MemoryStoreProvider>(store_);
  TempDir tmp_;
  std::unique_ptr<UriResolver> resolver_;
};

TEST_F(UploadRecordTest, EveryStartedUploadIsRecordedUntilTheOutputGoes) {
  auto out = Uploaded("s3://bkt/out/fused");
  ASSERT_NE(out, nullptr);
  const std::vector<std::string> lines = RecordLines();
  ASSERT_EQ(lines.size(), 2u);
  EXPECT_TRUE(absl::StartsWith(lines[0],
                               "s3://bkt/out/fused/a.safetensors\t"
                               "mem-upload-"))
      << lines[0];
  EXPECT_TRUE(absl::StartsWith(lines[1], "s3://bkt/out/fused/config.json\t"))
      << lines[1];
  // A live writer's record and staging are left alone by a cleanup.
  const RemoteScratchCleanup live =
      CleanRemoteScratch(tmp_.Join("scratch"), provider_.get());
  EXPECT_EQ(live.records, 0);
  EXPECT_EQ(live.staging_removed, 0);
  EXPECT_TRUE(store_->aborted_ids().empty());
  EXPECT_EQ(RecordLines().size(), 2u);
  StagedOutput* one[] = {out.get()};
  ASSERT_TRUE(PublishAll(one).ok());
  out.reset();
  EXPECT_TRUE(ListDirectory(tmp_.Join("scratch"))->empty());
}

TEST_F(UploadRecordTest, ADeadWritersUploadsAreAbortedAndItsStagingRemoved) {
  // The writer is a child process that dies (no destructor runs, as after
  // SIGKILL) after uploading every part and before committing. No LibTorch
  // in this binary, so fork() is safe.
  const pid_t child = ::fork();
  ASSERT_GE(child, 0);
  if (child == 0) {
    std::unique_ptr<StagedOutput> out = Uploaded("s3://bkt/out/dead");
    ::_exit(out != nullptr && RecordLines().size() == 2 ? 0 : 1);
  }
  int status = 0;
  ASSERT_EQ(::waitpid(child, &status, 0), child);
  ASSERT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << status;
  const std::vector<std::string> recorded = RecordLines();
  ASSERT_EQ(recorded.size(), 2u);
  EXPECT_EQ(Entries(".tailor-uploads").size(), 1u);
  ASSERT_FALSE(Entries("").empty());
  // A live writer beside it keeps everything.
  auto live = Uploaded("s3://bkt/out/live");
  ASSERT_NE(live, nullptr);

  const RemoteScratchCleanup cleaned =
      CleanRemoteScratch(tmp_.Join("scratch"), provider_.get());
  EXPECT_EQ(cleaned.records, 1);
  EXPECT_EQ(cleaned.aborted, 2);
  EXPECT_EQ(cleaned.abort_failures, 0);
  EXPECT_EQ(cleaned.staging_removed, 1);
  std::vector<std::string> expected;
  for (const std::string& line : recorded) {
    std::vector<std::string> f = absl::StrSplit(line, '\t');
    ASSERT_EQ(f.size(), 2u);
    expected.push_back(f[0] + " " + f[1]);
  }
  EXPECT_EQ(store_->aborted_ids(), expected);
  // Only the live writer's staging and record remain.
  EXPECT_EQ(RecordLines().size(), 2u);
  const std::vector<std::string> left =
      ListDirectory(tmp_.Join("scratch")).value();
  for (const std::string& n : left) {
    EXPECT_EQ(n.find("dead"), std::string::npos) << n;
  }
  StagedOutput* one[] = {live.get()};
  ASSERT_TRUE(PublishAll(one).ok());
  live.reset();
  EXPECT_TRUE(ListDirectory(tmp_.Join("scratch"))->empty());
  EXPECT_TRUE(store_->Has("s3://bkt/out/live/a.safetensors"));
  EXPECT_FALSE(store_->Has("s3://bkt/out/dead/a.safetensors"));
}

TEST_F(UploadRecordTest, AMissingScratchDirectoryIsNothingToDo) {
  const RemoteScratchCleanup cleaned =
      CleanRemoteScratch(tmp_.Join("nothing-here"), provider_.get());
  EXPECT_EQ(cleaned.records + cleaned.staging_removed, 0);
}

}  // namespace
}  // namespace tailor
