#include "jobs/job_store.h"

#include <gtest/gtest.h>

#include "testing/temp_dir.h"

namespace tailor::jobs {
namespace {

using ::tailor::testing::TempDir;

Job MakeJob() {
  Job job;
  job.id = "0123456789abcdef";
  job.request_id = "req-1";
  job.spec = {{"pretrained", "/m"}, {"keep", 0.1}};
  job.priority = 4;
  job.labels = {{"team", "vision"}};
  job.fingerprint = "fp";
  job.create_order = 7;
  job.state = JobState::kRunning;
  job.create_time = absl::FromUnixMicros(1700000000123456);
  job.progress.tensors_done = 2;
  job.progress.eta_seconds = 1.5;
  job.last_sequence = 2;
  return job;
}

TEST(JobStoreTest, JobsAndEventsRoundTripAcrossReopen) {
  TempDir dir;
  const std::string path = dir.Join("jobs.db");
  Job job = MakeJob();
  JobEvent queued;
  queued.sequence = 1;
  queued.time = absl::FromUnixMicros(1700000000123456);
  queued.state = JobState::kQueued;
  JobEvent progress;
  progress.sequence = 2;
  progress.kind = JobEvent::Kind::kProgress;
  progress.progress.tensor = "w";
  progress.progress.bytes_total = 1ull << 40;
  {
    auto store = JobStore::Open(path);
    ASSERT_TRUE(store.ok()) << store.status();
    ASSERT_TRUE((*store)->Commit(job, {queued}).ok());
    ASSERT_TRUE((*store)->Commit(job, {progress}).ok());
    // The same sequence twice is refused and changes nothing.
    job.state = JobState::kFailed;
    EXPECT_FALSE((*store)->Commit(job, {progress}).ok());
  }
  auto store = JobStore::Open(path);
  ASSERT_TRUE(store.ok());
  auto jobs = (*store)->LoadJobs();
  ASSERT_TRUE(jobs.ok()) << jobs.status();
  ASSERT_EQ(jobs->size(), 1u);
  const Job& j = (*jobs)[0];
  EXPECT_EQ(j.name(), "fusionJobs/0123456789abcdef");
  EXPECT_EQ(j.state, JobState::kRunning);  // the failed commit rolled back
  EXPECT_EQ(j.spec, job.spec);
  EXPECT_EQ(j.labels, job.labels);
  EXPECT_EQ(j.priority, 4);
  EXPECT_EQ(j.create_time, job.create_time);
  EXPECT_EQ(j.start_time, absl::InfinitePast());
  EXPECT_EQ(j.progress.tensors_done, 2);
  EXPECT_EQ(j.progress.eta_seconds, 1.5);
  auto events = (*store)->LoadEvents(job.id);
  ASSERT_TRUE(events.ok());
  ASSERT_EQ(events->size(), 2u);
  EXPECT_EQ((*events)[0].state, JobState::kQueued);
  EXPECT_EQ((*events)[0].time, queued.time);
  EXPECT_EQ((*events)[1].kind, JobEvent::Kind::kProgress);
  EXPECT_EQ((*events)[1].progress.bytes_total, 1ull << 40);
}

TEST(JobStoreTest, UnopenablePathIsAnError) {
  TempDir dir;
  auto store = JobStore::Open(dir.Join("missing/dir/jobs.db"));
  EXPECT_FALSE(store.ok());
}

TEST(JobTest, NamesAreChecked) {
  EXPECT_EQ(*JobIdFromName("fusionJobs/0123456789abcdef"), "0123456789abcdef");
  EXPECT_FALSE(JobIdFromName("fusionJobs/0123456789ABCDEF").ok());
  EXPECT_FALSE(JobIdFromName("fusionJobs/../x").ok());
  EXPECT_FALSE(JobIdFromName("0123456789abcdef").ok());
}

}  // namespace
}  // namespace tailor::jobs
