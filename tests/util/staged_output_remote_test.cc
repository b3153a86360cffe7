// Remote outputs (util/staged_output.h, issue #16 point 3): staged locally,
// uploaded, visible only when every output was committed.

#include <atomic>
#include <memory>
#include <string>

#include "absl/strings/match.h"
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

class StagedOutputRemoteTest : public ::testing::Test {
 protected:
  StagedOutputRemoteTest() {
    UriResolver::Remote remote;
    remote.provider = std::make_shared<MemoryStoreProvider>(store_);
    remote.scratch_dir = tmp_.Join("scratch");
    resolver_ = std::make_unique<UriResolver>(
        UriResolver::Create({"s3://bkt/out/"}, {}, remote).value());
  }
  std::unique_ptr<StagedOutput> Dir(const std::string& uri,
                                    bool overwrite = false) {
    auto o = CreateStagedOutput(uri, StagedOutput::Kind::kDirectory, overwrite,
                                resolver_.get());
    EXPECT_TRUE(o.ok()) << o.status();
    if (!o.ok()) return nullptr;
    WriteFileAtomically(JoinPath((*o)->staging_path(), "a.safetensors"),
                        "shard a")
        .IgnoreError();
    WriteFileAtomically(
        JoinPath((*o)->staging_path(), "model.safetensors.index.json"), "{}")
        .IgnoreError();
    return *std::move(o);
  }
  std::unique_ptr<StagedOutput> File(const std::string& uri,
                                     const std::string& bytes,
                                     bool overwrite = false) {
    auto o = CreateStagedOutput(uri, StagedOutput::Kind::kFile, overwrite,
                                resolver_.get());
    EXPECT_TRUE(o.ok()) << o.status();
    if (!o.ok()) return nullptr;
    EXPECT_TRUE(
        PWriteFully((*o)->fd(), bytes.data(), bytes.size(), 0, "f").ok());
    return *std::move(o);
  }

  std::shared_ptr<MemoryObjectStore> store_ =
      std::make_shared<MemoryObjectStore>();
  TempDir tmp_;
  std::unique_ptr<UriResolver> resolver_;
};

TEST_F(StagedOutputRemoteTest, NothingIsVisibleBeforeEveryOutputCommits) {
  auto dir = Dir("s3://bkt/out/fused");
  auto report = File("s3://bkt/out/report.json", "{\"ok\":1}");
  EXPECT_TRUE(store_->Keys().empty());
  StagedOutput* both[] = {dir.get(), report.get()};
  ASSERT_TRUE(PublishAll(both).ok());
  std::string bytes;
  ASSERT_TRUE(store_->Get("s3://bkt/out/fused/a.safetensors", &bytes));
  EXPECT_EQ(bytes, "shard a");
  ASSERT_TRUE(store_->Get("s3://bkt/out/report.json", &bytes));
  EXPECT_EQ(bytes, "{\"ok\":1}");
  EXPECT_TRUE(store_->Has("s3://bkt/out/fused/model.safetensors.index.json"));
  EXPECT_TRUE(store_->PendingUploads().empty());
  dir.reset();
  report.reset();
  // The local staging is gone.
  EXPECT_TRUE(ListDirectory(tmp_.Join("scratch"))->empty());
}

TEST_F(StagedOutputRemoteTest, AFailedUploadLeavesNoVisibleObject) {
  auto dir = Dir("s3://bkt/out/fused");
  auto report = File("s3://bkt/out/report.json", "{}");
  store_->FailAppend(2, absl::UnavailableError("503 after retries"));
  StagedOutput* both[] = {dir.get(), report.get()};
  absl::Status s = PublishAll(both);
  EXPECT_EQ(s.code(), absl::StatusCode::kUnavailable) << s;
  dir.reset();
  report.reset();
  EXPECT_TRUE(store_->Keys().empty());
  EXPECT_TRUE(store_->PendingUploads().empty());
  EXPECT_GE(store_->aborted_uploads(), 1);
  EXPECT_TRUE(ListDirectory(tmp_.Join("scratch"))->empty());
}

TEST_F(StagedOutputRemoteTest, ACancelWhileUploadingAbortsEverything) {
  auto dir = Dir("s3://bkt/out/fused");
  auto report = File("s3://bkt/out/report.json", "{}");
  std::atomic<bool> cancel{true};
  StagedOutput* both[] = {dir.get(), report.get()};
  absl::Status s = PublishAll(both, &cancel);
  EXPECT_EQ(s.code(), absl::StatusCode::kCancelled) << s;
  EXPECT_TRUE(absl::StrContains(s.message(), "s3://bkt/out/fused/")) << s;
  EXPECT_TRUE(absl::StrContains(s.message(), "no output was published")) << s;
  dir.reset();
  report.reset();
  EXPECT_TRUE(store_->Keys().empty());
  EXPECT_TRUE(store_->PendingUploads().empty());
  EXPECT_TRUE(ListDirectory(tmp_.Join("scratch"))->empty());
}

TEST_F(StagedOutputRemoteTest, AFailedCommitRollsBackWhatWasCommitted) {
  auto dir = Dir("s3://bkt/out/fused");
  auto report = File("s3://bkt/out/report.json", "{}");
  store_->FailCommit(3, absl::UnavailableError("503"));  // the report
  StagedOutput* both[] = {dir.get(), report.get()};
  EXPECT_FALSE(PublishAll(both).ok());
  dir.reset();
  report.reset();
  EXPECT_TRUE(store_->Keys().empty());
  EXPECT_TRUE(store_->PendingUploads().empty());
}

TEST_F(StagedOutputRemoteTest, DestroyedUnpublishedAbortsEverything) {
  {
    auto dir = Dir("s3://bkt/out/fused");
    StagedOutput* one[] = {dir.get()};
    // Uploaded, then the job is cancelled before committing.
    ASSERT_TRUE(dir->Upload().ok());
    EXPECT_EQ(store_->PendingUploads().size(), 2u);
    (void)one;
  }
  EXPECT_TRUE(store_->Keys().empty());
  EXPECT_TRUE(store_->PendingUploads().empty());
}

TEST_F(StagedOutputRemoteTest, ExistingObjectsFollowTheOverwriteRule) {
  store_->Put("s3://bkt/out/report.json", "old");
  auto refused =
      CreateStagedOutput("s3://bkt/out/report.json", StagedOutput::Kind::kFile,
                         false, resolver_.get());
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kAlreadyExists);
  store_->Put("s3://bkt/out/fused/stale.safetensors", "old shard");
  EXPECT_EQ(
      CreateStagedOutput("s3://bkt/out/fused", StagedOutput::Kind::kDirectory,
                         false, resolver_.get())
          .status()
          .code(),
      absl::StatusCode::kAlreadyExists);
  // A prefix where a single object goes is never replaced.
  EXPECT_EQ(CreateStagedOutput("s3://bkt/out/fused", StagedOutput::Kind::kFile,
                               true, resolver_.get())
                .status()
                .code(),
            absl::StatusCode::kFailedPrecondition);
  auto report = File("s3://bkt/out/report.json", "new", /*overwrite=*/true);
  auto dir = Dir("s3://bkt/out/fused", /*overwrite=*/true);
  StagedOutput* both[] = {dir.get(), report.get()};
  ASSERT_TRUE(PublishAll(both).ok());
  std::string bytes;
  ASSERT_TRUE(store_->Get("s3://bkt/out/report.json", &bytes));
  EXPECT_EQ(bytes, "new");
  EXPECT_FALSE(store_->Has("s3://bkt/out/fused/stale.safetensors"))
      << "the replaced output's extra objects must go";
  EXPECT_TRUE(store_->Has("s3://bkt/out/fused/a.safetensors"));
}

TEST_F(StagedOutputRemoteTest, AnObjectAppearingWhileWritingIsNotReplaced) {
  auto report = File("s3://bkt/out/report.json", "mine");
  store_->Put("s3://bkt/out/report.json", "theirs");
  StagedOutput* one[] = {report.get()};
  EXPECT_EQ(PublishAll(one).code(), absl::StatusCode::kAlreadyExists);
  std::string bytes;
  ASSERT_TRUE(store_->Get("s3://bkt/out/report.json", &bytes));
  EXPECT_EQ(bytes, "theirs");
}

TEST_F(StagedOutputRemoteTest, NeedsAResolverAndAScratchDirectory) {
  EXPECT_EQ(CreateStagedOutput("s3://bkt/out/x", StagedOutput::Kind::kFile,
                               false, nullptr)
                .status()
                .code(),
            absl::StatusCode::kInvalidArgument);
  UriResolver::Remote remote;
  remote.provider = std::make_shared<MemoryStoreProvider>(store_);
  UriResolver no_scratch =
      UriResolver::Create({"s3://bkt/out/"}, {}, remote).value();
  EXPECT_EQ(CreateStagedOutput("s3://bkt/out/x", StagedOutput::Kind::kFile,
                               false, &no_scratch)
                .status()
                .code(),
            absl::StatusCode::kFailedPrecondition);
}

}  // namespace
}  // namespace tailor
