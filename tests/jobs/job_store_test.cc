#include "jobs/job_store.h"

#include <gtest/gtest.h>
#include <sqlite3.h>
#include <unistd.h>

#include <cstdlib>
#include <fstream>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "testing/temp_dir.h"
#include "util/file_util.h"

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

std::string Slurp(const std::string& path) {
  auto text = ReadFileToString(path, 1 << 30);
  return text.ok() ? *text : std::string();
}

void CopyFile(const std::string& from, const std::string& to) {
  std::ofstream(to, std::ios::binary) << Slurp(from);
}

JobEvent StateChange(int64_t seq, JobState state) {
  JobEvent e;
  e.sequence = seq;
  e.state = state;
  return e;
}

// Issue #10 point 16: a store that lost acknowledged jobs is refused, with
// an error naming the files; an intact one opens.
class StoreLossTest : public ::testing::Test {
 protected:
  std::string db() const { return dir_.Join("jobs.db"); }
  std::string marker() const { return dir_.Join("store.id"); }
  absl::StatusOr<std::unique_ptr<JobStore>> Open() {
    return JobStore::Open(db(), marker());
  }
  // Commits job `n` (a creation, marked) to `store`.
  static void Create(JobStore& store, int n) {
    Job job = MakeJob();
    job.id = absl::StrCat("000000000000000", n);
    job.create_order = n;
    job.state = JobState::kQueued;
    job.last_sequence = 1;
    ASSERT_TRUE(
        store.Commit(job, {StateChange(1, JobState::kQueued)}, true).ok());
  }
  static void ExpectRefused(const absl::StatusOr<std::unique_ptr<JobStore>>& s,
                            const std::string& what) {
    ASSERT_FALSE(s.ok());
    EXPECT_EQ(s.status().code(), absl::StatusCode::kDataLoss) << s.status();
    EXPECT_TRUE(absl::StrContains(s.status().message(), what)) << s.status();
    EXPECT_TRUE(absl::StrContains(s.status().message(), "refusing to start"))
        << s.status();
    EXPECT_TRUE(absl::StrContains(s.status().message(), "move jobs.db"))
        << s.status();
  }
  TempDir dir_;
};

TEST_F(StoreLossTest, IntactStoreReopensAndTheMarkerFollowsCommits) {
  {
    auto store = Open();
    ASSERT_TRUE(store.ok()) << store.status();
    Create(**store, 1);
    Create(**store, 2);
    EXPECT_GE((*store)->commit_seq(), 2);
  }
  EXPECT_TRUE(absl::StrContains(Slurp(marker()), "\"commit_seq\":2"))
      << Slurp(marker());
  auto store = Open();
  ASSERT_TRUE(store.ok()) << store.status();
  EXPECT_EQ((*store)->LoadJobs()->size(), 2u);
  // A store from before the marker existed opens and gains one.
  ASSERT_EQ(std::remove(marker().c_str()), 0);
  store->reset();
  ASSERT_TRUE(Open().ok());
  EXPECT_TRUE(PathExists(marker()));
}

// A marker that cannot be written (its directory is missing) is not fatal:
// the store opens and commits, and each failed write is a warning that
// names the marker and what the lagging marker means.
TEST_F(StoreLossTest, AMarkerThatCannotBeWrittenIsAWarningOnly) {
  const std::string marker = dir_.Join("gone/store.id");
  ::testing::internal::CaptureStderr();
  auto store = JobStore::Open(db(), marker);
  if (store.ok()) Create(**store, 1);
  const std::string err = ::testing::internal::GetCapturedStderr();
  ASSERT_TRUE(store.ok()) << store.status();
  EXPECT_EQ((*store)->LoadJobs()->size(), 1u);
  EXPECT_FALSE(PathExists(marker));
  EXPECT_TRUE(absl::StrContains(
      err, absl::StrCat("job store: cannot write ", marker, ": ")))
      << err;
  EXPECT_TRUE(absl::StrContains(err, "(loss detection uses the old marker)"))
      << err;
  EXPECT_TRUE(absl::StrContains(
      err, absl::StrCat("job store: cannot update ", marker, ": ")))
      << err;
  EXPECT_TRUE(absl::StrContains(err, "(the marker lags the store)")) << err;
}

TEST_F(StoreLossTest, TruncatedOrMissingDatabaseIsRefused) {
  {
    auto store = Open();
    ASSERT_TRUE(store.ok());
    Create(**store, 1);
  }
  ASSERT_EQ(::truncate(db().c_str(), 0), 0);
  ExpectRefused(Open(), "jobs.db is empty (0 bytes)");
  ASSERT_EQ(std::remove(db().c_str()), 0);
  ExpectRefused(Open(), "jobs.db is missing");
  EXPECT_FALSE(PathExists(db()));  // not recreated
}

TEST_F(StoreLossTest, OlderDatabaseIsRefused) {
  {
    auto store = Open();
    ASSERT_TRUE(store.ok());
    Create(**store, 1);
  }
  CopyFile(db(), dir_.Join("old.db"));
  {
    auto store = Open();
    ASSERT_TRUE(store.ok());
    Create(**store, 2);
  }
  CopyFile(dir_.Join("old.db"), db());
  ExpectRefused(Open(), "is older than what was acknowledged");
}

TEST_F(StoreLossTest, DeletedOrDamagedWalAfterACrashIsRefused) {
  // The files as a crash leaves them: copied while the store is open, the
  // last commits only in the WAL.
  TempDir crash;
  {
    auto store = Open();
    ASSERT_TRUE(store.ok());
    Create(**store, 1);
    Create(**store, 2);
    ASSERT_TRUE(PathExists(db() + "-wal"));
    for (const char* f : {"jobs.db", "jobs.db-wal", "store.id"}) {
      CopyFile(dir_.Join(f), crash.Join(f));
    }
  }
  auto at = [&](const char* f) { return crash.Join(f); };
  // As copied, it opens: the WAL is replayed.
  TempDir intact;
  for (const char* f : {"jobs.db", "jobs.db-wal", "store.id"}) {
    CopyFile(at(f), intact.Join(f));
  }
  {
    auto store =
        JobStore::Open(intact.Join("jobs.db"), intact.Join("store.id"));
    ASSERT_TRUE(store.ok()) << store.status();
    EXPECT_EQ((*store)->LoadJobs()->size(), 2u);
  }
  // Damaged WAL header: SQLite ignores the whole WAL.
  TempDir damaged;
  for (const char* f : {"jobs.db", "jobs.db-wal", "store.id"}) {
    CopyFile(at(f), damaged.Join(f));
  }
  {
    std::string wal = Slurp(damaged.Join("jobs.db-wal"));
    ASSERT_GT(wal.size(), 32u);
    for (int i = 24; i < 32; ++i) wal[i] ^= 0x5a;  // the header checksum
    std::ofstream(damaged.Join("jobs.db-wal"), std::ios::binary) << wal;
  }
  auto d = JobStore::Open(damaged.Join("jobs.db"), damaged.Join("store.id"));
  ASSERT_FALSE(d.ok());
  EXPECT_EQ(d.status().code(), absl::StatusCode::kDataLoss) << d.status();
  // Deleted WAL.
  ASSERT_EQ(std::remove(at("jobs.db-wal").c_str()), 0);
  auto w = JobStore::Open(at("jobs.db"), at("store.id"));
  ASSERT_FALSE(w.ok());
  EXPECT_EQ(w.status().code(), absl::StatusCode::kDataLoss) << w.status();
  EXPECT_TRUE(absl::StrContains(w.status().message(), "jobs.db")) << w.status();
}

TEST_F(StoreLossTest, DatabaseOfAnotherStoreIsRefused) {
  {
    auto store = Open();
    ASSERT_TRUE(store.ok());
    Create(**store, 1);
  }
  TempDir other;
  {
    auto store = JobStore::Open(other.Join("jobs.db"), other.Join("store.id"));
    ASSERT_TRUE(store.ok());
    Create(**store, 1);
    Create(**store, 2);
  }
  CopyFile(other.Join("jobs.db"), db());
  ExpectRefused(Open(), "belongs to store");
}

TEST(JobStoreTest, EventRangesAndInjectedFaults) {
  TempDir dir;
  auto store = JobStore::Open(dir.Join("jobs.db"));
  ASSERT_TRUE(store.ok());
  Job job = MakeJob();
  for (int64_t i = 1; i <= 10; ++i) {
    job.last_sequence = i;
    ASSERT_TRUE(
        (*store)->Commit(job, {StateChange(i, JobState::kRunning)}).ok());
  }
  auto some = (*store)->LoadEvents(job.id, 3, 4);
  ASSERT_TRUE(some.ok());
  ASSERT_EQ(some->size(), 4u);
  EXPECT_EQ(some->front().sequence, 4);
  EXPECT_EQ(some->back().sequence, 7);
  EXPECT_EQ((*store)->LoadEvents(job.id, 9)->size(), 1u);
  EXPECT_TRUE((*store)->LoadEvents(job.id, 10)->empty());
  (*store)->SetFaultForTesting(
      [] { return absl::ResourceExhaustedError("disk full"); });
  job.last_sequence = 11;
  EXPECT_EQ((*store)->Commit(job, {StateChange(11, JobState::kFailed)}).code(),
            absl::StatusCode::kResourceExhausted);
  (*store)->SetFaultForTesting(nullptr);
  EXPECT_EQ((*store)->LoadEvents(job.id, 0)->size(), 10u);
  EXPECT_TRUE((*store)->Commit(job, {StateChange(11, JobState::kFailed)}).ok());
}

TEST(JobTest, NamesAreChecked) {
  EXPECT_EQ(*JobIdFromName("fusionJobs/0123456789abcdef"), "0123456789abcdef");
  EXPECT_FALSE(JobIdFromName("fusionJobs/0123456789ABCDEF").ok());
  EXPECT_FALSE(JobIdFromName("fusionJobs/../x").ok());
  EXPECT_FALSE(JobIdFromName("0123456789abcdef").ok());
}

}  // namespace
}  // namespace tailor::jobs

namespace tailor::jobs {
namespace {

// Issue #14: a store written before the creator column still opens; its
// jobs belong to no principal, and new commits record the creator.
TEST(JobStoreTest, StoreWithoutTheCreatorColumnIsMigrated) {
  TempDir dir;
  const std::string path = dir.Join("jobs.db");
  Job old_job = MakeJob();
  {
    // The pre-#14 schema, with one job whose body has no "creator".
    sqlite3* db = nullptr;
    ASSERT_EQ(sqlite3_open(path.c_str(), &db), SQLITE_OK);
    nlohmann::json body = old_job.ToJson();
    body.erase("creator");
    const std::string sql = absl::StrCat(
        "CREATE TABLE jobs (id TEXT PRIMARY KEY, request_id TEXT,"
        " create_order INTEGER NOT NULL, state TEXT NOT NULL,"
        " body TEXT NOT NULL);"
        "INSERT INTO jobs VALUES ('",
        old_job.id, "', 'req-1', 7, 'RUNNING', '", body.dump(), "');");
    char* error = nullptr;
    ASSERT_EQ(sqlite3_exec(db, sql.c_str(), nullptr, nullptr, &error),
              SQLITE_OK)
        << (error ? error : "");
    sqlite3_close(db);
  }
  {
    auto store = JobStore::Open(path);
    ASSERT_TRUE(store.ok()) << store.status();
    auto jobs = (*store)->LoadJobs();
    ASSERT_TRUE(jobs.ok()) << jobs.status();
    ASSERT_EQ(jobs->size(), 1u);
    EXPECT_EQ((*jobs)[0].id, old_job.id);
    EXPECT_EQ((*jobs)[0].creator, "");
    Job mine = MakeJob();
    mine.id = "fedcba9876543210";
    mine.create_order = 8;
    mine.creator = "alice@example.com";
    ASSERT_TRUE((*store)->Commit(mine, {}).ok());
  }
  auto store = JobStore::Open(path);  // a second open: nothing to migrate
  ASSERT_TRUE(store.ok()) << store.status();
  auto jobs = (*store)->LoadJobs();
  ASSERT_TRUE(jobs.ok());
  ASSERT_EQ(jobs->size(), 2u);
  EXPECT_EQ((*jobs)[1].creator, "alice@example.com");
}

}  // namespace
}  // namespace tailor::jobs
