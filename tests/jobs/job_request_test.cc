#include "jobs/job_request.h"

#include <set>

#include "absl/strings/match.h"
#include "gtest/gtest.h"
#include "jobs/run_outcome.h"
#include "testing/temp_dir.h"
#include "util/file_util.h"

namespace tailor::jobs {
namespace {

void ExpectInvalid(const CreateJobRequest& r, const std::string& text) {
  absl::Status s = CheckCreateJobRequest(r);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
  EXPECT_TRUE(absl::StrContains(s.message(), text)) << s;
}

TEST(JobRequestTest, ChecksPriorityRequestIdAndLabels) {
  CreateJobRequest r;
  r.priority = 9;
  r.request_id = std::string(36, 'a');
  r.labels = {{"team", "nlp-1_x"}};
  EXPECT_TRUE(CheckCreateJobRequest(r).ok());
  CreateJobRequest bad = r;
  bad.priority = 10;
  ExpectInvalid(bad, "priority: must be in 0..9, not 10");
  bad = r;
  bad.request_id = std::string(37, 'a');
  ExpectInvalid(bad, "request_id: must be at most 36 characters");
  bad.request_id = "a b";
  ExpectInvalid(bad, "request_id: must be printable ASCII");
  bad = r;
  bad.labels = {{"Team", "x"}};
  ExpectInvalid(bad, "labels key: 'Team' may contain only");
  bad.labels = {{"team", ""}};
  ExpectInvalid(bad, "labels[team]: must be 1 to 63 characters");
  bad.labels.clear();
  for (int i = 0; i < 17; ++i) bad.labels[std::string(1, 'a' + i)] = "v";
  ExpectInvalid(bad, "labels: at most 16 labels");
}

TEST(JobRequestTest, JobIdsAreHexAndDistinct) {
  std::set<std::string> ids;
  for (int i = 0; i < 100; ++i) {
    const std::string id = NewJobId();
    ASSERT_EQ(id.size(), 16u);
    EXPECT_EQ(id.find_first_not_of("0123456789abcdef"), std::string::npos);
    ids.insert(id);
  }
  EXPECT_EQ(ids.size(), 100u);
}

TEST(JobRequestTest, OverlapIsComponentWise) {
  EXPECT_TRUE(PathsOverlap("/a/b", "/a/b"));
  EXPECT_TRUE(PathsOverlap("/a", "/a/b"));
  EXPECT_TRUE(PathsOverlap("/a/b/c", "/a"));
  EXPECT_TRUE(PathsOverlap("/", "/x"));
  EXPECT_FALSE(PathsOverlap("/a/b", "/a/bc"));
  EXPECT_FALSE(PathsOverlap("/a/x", "/a/y"));
  absl::Status s = CheckOutputsDisjoint({{"out", "/d/out"}},
                                        {{"patch_out", "/d"}}, "fusionJobs/1");
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_TRUE(absl::StrContains(s.message(),
                                "out: '/d/out' overlaps the output patch_out "
                                "('/d') of fusionJobs/1"))
      << s;
  EXPECT_TRUE(
      CheckOutputsDisjoint({{"out", "/d/a"}}, {{"out", "/d/b"}}, "x").ok());
}

TEST(RunOutcomeTest, ClassifiesEveryEnding) {
  const nlohmann::json spec = {{"out", "o"}, {"patch_out", "p"}};
  RunOutcome ok = ClassifyRun(
      nlohmann::json{{"method", "ties"},
                     {"totals", {{"kept", 3}}},
                     {"outputs", {{"patch_sha256", "ab"}, {"patch_bytes", 9}}}},
      spec, false, false);
  EXPECT_EQ(ok.state, JobState::kSucceeded);
  EXPECT_EQ(ok.summary["method"], "ties");
  EXPECT_EQ(ok.summary["kept"], 3);
  EXPECT_EQ(ok.summary["fused"], "o");
  EXPECT_EQ(ok.summary["patch_sha256"], "ab");
  EXPECT_EQ(ok.event.result, ok.summary);
  EXPECT_EQ(ok.event.kind, JobEvent::Kind::kStateChange);
  EXPECT_EQ(ok.report_text.back(), '\n');

  const absl::StatusOr<nlohmann::json> cancelled = absl::CancelledError("stop");
  EXPECT_EQ(ClassifyRun(cancelled, spec, /*interrupted=*/true,
                        /*user_cancel=*/false)
                .state,
            JobState::kQueued);
  EXPECT_EQ(ClassifyRun(cancelled, spec, true, /*user_cancel=*/true).state,
            JobState::kCancelled);
  EXPECT_EQ(ClassifyRun(cancelled, spec, false, false).state,
            JobState::kCancelled);
  RunOutcome failed =
      ClassifyRun(absl::NotFoundError("no base"), spec, true, false);
  EXPECT_EQ(failed.state, JobState::kFailed);
  EXPECT_EQ(failed.event.error_code,
            static_cast<int>(absl::StatusCode::kNotFound));
  EXPECT_EQ(failed.event.error_message, "no base");
  EXPECT_TRUE(failed.report_text.empty());
  EXPECT_EQ(OutcomeLabel(JobState::kSucceeded), "succeeded");
}

// Issue #17 point 1: checked at create, not when the job runs.
TEST(JobRequestTest, OutputsThatExistOrCannotBeCreatedAreRefused) {
  ::tailor::testing::TempDir dir;
  ASSERT_TRUE(WriteFileAtomically(dir.Join("file"), "x").ok());
  ASSERT_TRUE(MakeDirectories(dir.Join("fused")).ok());
  const OutputPaths fine = {{"out", dir.Join("new/deeper/fused")},
                            {"report", dir.Join("r.json")}};
  EXPECT_TRUE(CheckOutputsCreatable(fine, false).ok());

  absl::Status s = CheckOutputsCreatable({{"out", dir.Join("fused")}}, false);
  EXPECT_EQ(s.code(), absl::StatusCode::kAlreadyExists) << s;
  EXPECT_TRUE(absl::StartsWith(s.message(), "out: ")) << s;
  EXPECT_TRUE(absl::StrContains(s.message(), "overwrite: true")) << s;
  EXPECT_TRUE(absl::StrContains(s.message(), "--overwrite")) << s;
  EXPECT_TRUE(CheckOutputsCreatable({{"out", dir.Join("fused")}}, true).ok());

  s = CheckOutputsCreatable({{"patch_out", dir.Join("file/sub/p.safetensors")}},
                            true);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
  EXPECT_TRUE(absl::StartsWith(s.message(), "patch_out: ")) << s;
  EXPECT_TRUE(absl::StrContains(s.message(), "is not a directory")) << s;
}

}  // namespace
}  // namespace tailor::jobs
