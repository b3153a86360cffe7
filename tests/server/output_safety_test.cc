// Issue #10, output safety, against a real tailord process: outputs that
// would replace a root, the data directory or an input are refused at create;
// a patch replaced after its job succeeded is never served; staging left by
// a killed writer is removed at start-up.

#include <gtest/gtest.h>
#include <signal.h>
#include <sys/stat.h>

#include <functional>

#include "absl/strings/match.h"
#include "tailord_fixture.h"
#include "util/file_util.h"

namespace tailor {
namespace {

// The tailord fixture's checkpoints, process and stub; ReadPatch besides.
class OutputSafetyTest : public TailordTest {
 protected:
  // Reads the job's patch through ReadJobResult; the status and the bytes.
  grpc::Status ReadPatch(const std::string& name, std::string* bytes) {
    grpc::ClientContext context;
    auto reader = ReadPatchStream(stub_.get(), &context, name, 60);
    v1::ResultChunk chunk;
    bytes->clear();
    while (reader->Read(&chunk)) bytes->append(chunk.data());
    return reader->Finish();
  }
};

// Points 1, 2, 3: refused at create (nothing runs), naming the field; the
// job store survives.
TEST_F(OutputSafetyTest, BadOutputPlansAreRefusedAtCreate) {
  auto server = Start();
  ASSERT_TRUE(server->ok());
  v1::FusionJob ok_job;
  ASSERT_TRUE(Create(Spec("good"), &ok_job).ok());
  ASSERT_EQ(WaitDone(ok_job.name()).state(), v1::SUCCEEDED);
  ::mkdir(tmp_.Join("a-dir").c_str(), 0755);

  struct Case {
    std::string what;
    std::function<void(v1::FusionJobSpec&)> edit;
    grpc::StatusCode code;
    std::string field;
  };
  const std::vector<Case> cases = {
      {"out = the allowed root",
       [&](v1::FusionJobSpec& s) { s.set_out(tmp_.path()); },
       grpc::StatusCode::PERMISSION_DENIED, "out"},
      {"out = the data directory",
       [&](v1::FusionJobSpec& s) { s.set_out(tmp_.Join("data")); },
       grpc::StatusCode::PERMISSION_DENIED, "out"},
      {"patch_out = jobs.db",
       [&](v1::FusionJobSpec& s) {
         s.set_patch_out(tmp_.Join("data/jobs.db"));
       },
       grpc::StatusCode::PERMISSION_DENIED, "patch_out"},
      {"report in the data directory",
       [&](v1::FusionJobSpec& s) { s.set_report(tmp_.Join("data/r.json")); },
       grpc::StatusCode::PERMISSION_DENIED, "report"},
      {"out = the pretrained directory",
       [&](v1::FusionJobSpec& s) { s.set_out(tmp_.Join("base")); },
       grpc::StatusCode::INVALID_ARGUMENT, "out"},
      {"out = the fine-tuned directory",
       [&](v1::FusionJobSpec& s) { s.set_out(tmp_.Join("ft")); },
       grpc::StatusCode::INVALID_ARGUMENT, "out"},
      {"patch_out = the calibration file",
       [&](v1::FusionJobSpec& s) {
         s.set_patch_out(tmp_.Join("h.safetensors"));
       },
       grpc::StatusCode::INVALID_ARGUMENT, "patch_out"},
      {"out == patch_out",
       [&](v1::FusionJobSpec& s) { s.set_patch_out(s.out()); },
       grpc::StatusCode::INVALID_ARGUMENT, "patch_out"},
      {"report == patch_out",
       [&](v1::FusionJobSpec& s) { s.set_report(s.patch_out()); },
       grpc::StatusCode::INVALID_ARGUMENT, "report"},
      {"report is an existing directory",
       [&](v1::FusionJobSpec& s) { s.set_report(tmp_.Join("a-dir")); },
       grpc::StatusCode::INVALID_ARGUMENT, "report"},
  };
  for (const Case& c : cases) {
    v1::FusionJobSpec spec = Spec("bad");
    spec.set_overwrite(true);
    c.edit(spec);
    v1::FusionJob job;
    grpc::Status s = Create(spec, &job);
    EXPECT_EQ(s.error_code(), c.code) << c.what << ": " << s.error_message();
    EXPECT_TRUE(absl::StrContains(s.error_message(), c.field + ":"))
        << c.what << ": " << s.error_message();
  }
  EXPECT_FALSE(PathExists(tmp_.Join("bad.patch.safetensors")));
  EXPECT_TRUE(IsRegularFile(tmp_.Join("base/model.safetensors")));
  EXPECT_TRUE(IsRegularFile(tmp_.Join("h.safetensors")));

  // The job store is intact after a restart.
  ASSERT_EQ(server->Stop(SIGTERM), 0);
  server = Start();
  ASSERT_TRUE(server->ok());
  EXPECT_EQ(Get(ok_job.name()).state(), v1::SUCCEEDED);
}

// Point 4: job A's patch later overwritten (by job B, or in place): fetching
// A's patch is an error, never B's bytes.
TEST_F(OutputSafetyTest, ReplacedPatchIsNotServed) {
  auto server = Start();
  ASSERT_TRUE(server->ok());
  v1::FusionJob a;
  ASSERT_TRUE(Create(Spec("shared"), &a).ok());  // keep 0.25
  ASSERT_EQ(WaitDone(a.name()).state(), v1::SUCCEEDED);
  const std::string patch_path = tmp_.Join("shared.patch.safetensors");
  const std::string a_bytes = ReadFileOrDie(patch_path);
  std::string served;
  ASSERT_TRUE(ReadPatch(a.name(), &served).ok());
  EXPECT_EQ(served, a_bytes);

  v1::FusionJobSpec b_spec = Spec("shared");
  b_spec.set_keep(0.5);
  b_spec.set_overwrite(true);
  v1::FusionJob b;
  ASSERT_TRUE(Create(b_spec, &b).ok());
  ASSERT_EQ(WaitDone(b.name()).state(), v1::SUCCEEDED);
  const std::string b_bytes = ReadFileOrDie(patch_path);
  ASSERT_NE(a_bytes, b_bytes);

  grpc::Status s = ReadPatch(a.name(), &served);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::DATA_LOSS) << s.error_message();
  EXPECT_TRUE(absl::StrContains(s.error_message(), "changed since"))
      << s.error_message();
  EXPECT_TRUE(served.empty()) << "served " << served.size() << " bytes";
  CliResult fetch =
      RunTailorctl({"fetch", a.name(), "--server", server->address(), "--patch",
                    tmp_.Join("fetched-a.patch")},
                   tmp_.path());
  EXPECT_NE(fetch.code, 0) << fetch.out;
  EXPECT_TRUE(absl::StrContains(fetch.err, "changed since")) << fetch.err;
  if (PathExists(tmp_.Join("fetched-a.patch"))) {
    EXPECT_NE(ReadFileOrDie(tmp_.Join("fetched-a.patch")), b_bytes);
  }
  // B's own patch is served.
  ASSERT_TRUE(ReadPatch(b.name(), &served).ok());
  EXPECT_EQ(served, b_bytes);

  // Same size, one byte changed in place.
  std::string tampered = b_bytes;
  tampered.back() ^= 0x01;
  WriteFileOrDie(patch_path, tampered);
  s = ReadPatch(b.name(), &served);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::DATA_LOSS) << s.error_message();
}

// Two active jobs never write the same output: the second is refused at
// create, naming the first (a finished job's outputs may be reused).
TEST_F(OutputSafetyTest, OutputsOfAnActiveJobAreRefused) {
  auto server = Start();
  ASSERT_TRUE(server->ok());
  // A job slow enough to still be queued or running at the second create.
  const v1::FusionJobSpec slow = SlowSpec("busy");
  v1::FusionJob first;
  ASSERT_TRUE(Create(slow, &first).ok());
  v1::FusionJobSpec second = Spec("elsewhere");
  second.set_patch_out(tmp_.Join("busy.patch.safetensors"));
  second.set_overwrite(true);
  v1::FusionJob job;
  grpc::Status s = Create(second, &job);
  const v1::FusionJob now = Get(first.name());
  if (now.state() == v1::QUEUED || now.state() == v1::RUNNING) {
    EXPECT_EQ(s.error_code(), grpc::StatusCode::FAILED_PRECONDITION)
        << s.error_message();
    EXPECT_TRUE(absl::StrContains(s.error_message(), first.name()))
        << s.error_message();
    EXPECT_TRUE(absl::StartsWith(s.error_message(), "patch_out:"))
        << s.error_message();
  } else {
    GTEST_SKIP() << "the first job finished before the second create";
  }
  ASSERT_EQ(WaitDone(first.name()).state(), v1::SUCCEEDED);
  EXPECT_TRUE(Create(second, &job).ok());
}

// Point 17: staging entries of stored jobs' outputs, left by a killed
// writer, are removed at start-up; nothing else is.
TEST_F(OutputSafetyTest, StaleStagingIsRemovedAtStartup) {
  auto server = Start();
  ASSERT_TRUE(server->ok());
  v1::FusionJob job;
  ASSERT_TRUE(Create(Spec("kept"), &job).ok());
  ASSERT_EQ(WaitDone(job.name()).state(), v1::SUCCEEDED);
  ASSERT_EQ(server->Stop(SIGKILL), -1);

  const std::string stale_dir = tmp_.Join(".kept-fused.tailor-stage-1-4");
  const std::string legacy_dir = tmp_.Join(".kept-fused.partial-1-0");
  const std::string stale_spool =
      tmp_.Join(".kept.patch.safetensors.spool-1-2");
  const std::string not_ours = tmp_.Join(".kept-fused.partial-notes");
  const std::string other = tmp_.Join(".unrelated.tailor-stage-1-0");
  ASSERT_EQ(::mkdir(stale_dir.c_str(), 0755), 0);
  ASSERT_EQ(::mkdir(legacy_dir.c_str(), 0755), 0);
  WriteFileOrDie(JoinPath(stale_dir, "model.safetensors"),
                 std::string(1 << 16, 'x'));
  WriteFileOrDie(stale_spool, "spool");
  WriteFileOrDie(not_ours, "notes");
  WriteFileOrDie(other, "other");

  server = Start();
  ASSERT_TRUE(server->ok());
  EXPECT_FALSE(PathExists(stale_dir));
  EXPECT_FALSE(PathExists(legacy_dir));
  EXPECT_FALSE(PathExists(stale_spool));
  EXPECT_TRUE(PathExists(not_ours));
  EXPECT_TRUE(PathExists(other));
  EXPECT_TRUE(IsDirectory(tmp_.Join("kept-fused")));
}

}  // namespace
}  // namespace tailor
