#include "jobs/job_filter.h"

#include <vector>

#include "absl/strings/match.h"
#include "gtest/gtest.h"

namespace tailor::jobs {
namespace {

Job MakeJob(JobState state, std::map<std::string, std::string> labels) {
  Job j;
  j.state = state;
  j.labels = std::move(labels);
  return j;
}

TEST(JobFilterTest, EmptyMatchesEverything) {
  for (const std::string text : {"", "   "}) {
    absl::StatusOr<JobFilter> f = ParseJobFilter(text);
    ASSERT_TRUE(f.ok()) << f.status();
    EXPECT_TRUE(f->Matches(MakeJob(JobState::kFailed, {})));
    EXPECT_EQ(f->canonical, "");
  }
}

TEST(JobFilterTest, EveryTermMustHold) {
  absl::StatusOr<JobFilter> f =
      ParseJobFilter(" labels.team = nlp AND state=RUNNING ");
  ASSERT_TRUE(f.ok()) << f.status();
  EXPECT_TRUE(f->Matches(MakeJob(JobState::kRunning, {{"team", "nlp"}})));
  EXPECT_FALSE(f->Matches(MakeJob(JobState::kQueued, {{"team", "nlp"}})));
  EXPECT_FALSE(f->Matches(MakeJob(JobState::kRunning, {{"team", "cv"}})));
  EXPECT_FALSE(f->Matches(MakeJob(JobState::kRunning, {})));
  // Sorted terms: the same filter written in another order.
  absl::StatusOr<JobFilter> g =
      ParseJobFilter("state=RUNNING AND labels.team=nlp");
  ASSERT_TRUE(g.ok());
  EXPECT_EQ(f->canonical, g->canonical);
  // Two values of one key match nothing.
  absl::StatusOr<JobFilter> both =
      ParseJobFilter("state=RUNNING AND state=QUEUED");
  ASSERT_TRUE(both.ok());
  EXPECT_FALSE(both->Matches(MakeJob(JobState::kRunning, {})));
  EXPECT_FALSE(both->Matches(MakeJob(JobState::kQueued, {})));
}

TEST(JobFilterTest, BadTermsNameTheFilterAndAreBounded) {
  absl::Status s = ParseJobFilter("state=DONE").status();
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(absl::StrContains(s.message(), "filter: unknown state 'DONE'"))
      << s;
  s = ParseJobFilter("state=UNSPECIFIED").status();
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
  for (const std::string& bad : std::vector<std::string>{
           "owner=me", "labels.=x", "labels.team", std::string(5000, 'x')}) {
    s = ParseJobFilter(bad).status();
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << bad;
    EXPECT_TRUE(absl::StartsWith(s.message(), "filter: term '")) << s;
    EXPECT_LT(s.message().size(), 300u);
  }
}

TEST(JobFilterTest, PageTokensAreBoundToTheirFilter) {
  JobFilter running = *ParseJobFilter("state=RUNNING");
  JobFilter queued = *ParseJobFilter("state=QUEUED");
  const std::string token = PageToken(running, 42);
  absl::StatusOr<int64_t> before = ParsePageToken(running, token);
  ASSERT_TRUE(before.ok()) << before.status();
  EXPECT_EQ(*before, 42);
  absl::Status s = ParsePageToken(queued, token).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(absl::StrContains(s.message(), "issued for another filter")) << s;
  for (const std::string& bad : std::vector<std::string>{
           "", "not base64!", "dDE6MDow", std::string(300, 'A'),
           PageToken(running, 0), PageToken(running, -5)}) {
    s = ParsePageToken(running, bad).status();
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << bad;
    EXPECT_TRUE(absl::StartsWith(s.message(), "page_token: ")) << s;
  }
}

}  // namespace
}  // namespace tailor::jobs
