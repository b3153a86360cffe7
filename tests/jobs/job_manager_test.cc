// The job manager over a fake runner: queueing, priorities, events,
// cancellation, idempotency, limits, drain and restart.

#include "jobs/job_manager.h"

#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <set>
#include <thread>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "testing/temp_dir.h"
#include "util/file_util.h"

namespace tailor::jobs {
namespace {

using ::tailor::testing::TempDir;

// Runs "jobs" described by their spec: {"pretrained": "...", "tensors": N,
// "block": bool, "fail": "message"}. Blocked jobs wait until Release() or
// cancellation.
class FakeRunner : public JobRunner {
 public:
  struct Shared {
    std::atomic<bool> released{false};
    absl::Mutex mu;
    std::vector<std::string> started ABSL_GUARDED_BY(mu);
    // Per run: the journal directory given, and whether the previous run's
    // marker was in it.
    std::vector<std::pair<std::string, bool>> journals ABSL_GUARDED_BY(mu);
    std::vector<RunnerDevice> devices = {{"cpu", "cpu", int64_t{1} << 30}};
    // Leases held now and at most, by device name (specs with
    // "tensor_bytes": each tensor leases that much for "hold_ms").
    std::map<std::string, int> leased ABSL_GUARDED_BY(mu);
    std::map<std::string, int> most_leased ABSL_GUARDED_BY(mu);
  };
  explicit FakeRunner(Shared* shared) : shared_(shared) {}

  absl::StatusOr<nlohmann::json> Prepare(
      const nlohmann::json& spec) const override {
    if (!spec.is_object() || !spec.contains("pretrained")) {
      return absl::InvalidArgumentError("pretrained: is required");
    }
    if (spec["pretrained"] == "/denied") {
      return absl::PermissionDeniedError("pretrained: outside the roots");
    }
    nlohmann::json canonical = spec;
    canonical["canonical"] = true;
    return canonical;
  }

  // The caller's roots: "pretrained" must start with one of them.
  absl::StatusOr<nlohmann::json> PrepareWithin(
      const nlohmann::json& spec,
      const std::vector<std::string>& roots) const override {
    absl::StatusOr<nlohmann::json> canonical = Prepare(spec);
    if (!canonical.ok()) return canonical;
    for (const std::string& root : roots) {
      if (absl::StartsWith(spec["pretrained"].get<std::string>(), root)) {
        return canonical;
      }
    }
    return absl::PermissionDeniedError(
        "pretrained: outside the caller's roots");
  }

  absl::StatusOr<nlohmann::json> Run(const nlohmann::json& spec,
                                     const RunOptions& options) override {
    {
      absl::MutexLock lock(&shared_->mu);
      shared_->started.push_back(spec["pretrained"].get<std::string>());
      const std::string marker = JoinPath(options.journal_dir, "marker");
      shared_->journals.emplace_back(options.journal_dir, PathExists(marker));
      // Stands for the engine's journal: there from the run's start.
      absl::Status s = MakeDirectories(options.journal_dir);
      if (s.ok()) s = WriteFileAtomically(marker, spec.dump());
      if (!s.ok()) return s;
    }
    const int n = spec.value("tensors", 2);
    ProgressEvent e;
    e.total = n;
    e.bytes_total = 100 * n;
    options.progress->OnEvent(e);
    while (spec.value("block", false) && !shared_->released.load()) {
      if (options.cancel->load() && !spec.value("ignore_cancel", false)) {
        return absl::CancelledError("stopped");
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
    for (int i = 0; i < n; ++i) {
      if (options.cancel->load() && !spec.value("ignore_cancel", false)) {
        return absl::CancelledError("stopped");
      }
      e.kind = ProgressEvent::Kind::kTensorDone;
      e.tensor = "t" + std::to_string(i);
      if (spec.contains("tensor_bytes")) {
        const auto asked = std::chrono::steady_clock::now();
        absl::StatusOr<std::unique_ptr<DeviceLease>> lease =
            options.device_scheduler->Acquire(e.tensor,
                                              spec["tensor_bytes"].get<int>());
        if (!lease.ok()) return lease.status();
        e.device = (*lease)->name();
        e.wait_seconds = std::chrono::duration<double>(
                             std::chrono::steady_clock::now() - asked)
                             .count();
        {
          absl::MutexLock lock(&shared_->mu);
          int& now = ++shared_->leased[e.device];
          int& most = shared_->most_leased[e.device];
          most = std::max(most, now);
        }
        const auto until = std::chrono::steady_clock::now() +
                           std::chrono::milliseconds(spec.value("hold_ms", 0));
        while (std::chrono::steady_clock::now() < until &&
               !options.cancel->load()) {
          std::this_thread::sleep_for(std::chrono::milliseconds(1));
        }
        absl::MutexLock lock(&shared_->mu);
        --shared_->leased[e.device];
      }
      e.action = "fused";
      e.done = i + 1;
      e.bytes_done = 100 * (i + 1);
      e.elapsed_seconds = 0.01 * (i + 1);
      options.progress->OnEvent(e);
    }
    if (spec.contains("fail")) {
      return absl::InvalidArgumentError(spec["fail"].get<std::string>());
    }
    return nlohmann::json{{"method", "fake"}, {"totals", {{"kept", n}}}};
  }

  absl::StatusOr<std::string> ResolveOutput(
      const std::string& uri) const override {
    return uri;
  }
  // A spec's "out" (a path taken literally) is its one output.
  std::vector<std::pair<std::string, std::string>> OutputPaths(
      const nlohmann::json& spec) const override {
    if (!spec.contains("out") || !spec["out"].is_string()) return {};
    return {{"out", spec["out"].get<std::string>()}};
  }
  std::vector<RunnerDevice> Devices() const override {
    return shared_->devices;
  }

 private:
  Shared* shared_;
};

class JobManagerTest : public ::testing::Test {
 protected:
  std::unique_ptr<JobManager> Start(JobManagerOptions options = {}) {
    options.data_dir = dir_.Join("data");
    if (!options.store_fault_for_testing) {
      options.store_fault_for_testing = [this]() -> absl::Status {
        if (store_fails_.load()) {
          return absl::ResourceExhaustedError("injected: no space left");
        }
        return absl::OkStatus();
      };
    }
    registry_ = std::make_unique<metrics::Registry>();  // one per manager
    auto m = JobManager::Create(options, std::make_unique<FakeRunner>(&shared_),
                                registry_.get());
    EXPECT_TRUE(m.ok()) << m.status();
    return m.ok() ? std::move(*m) : nullptr;
  }

  static CreateJobRequest Request(nlohmann::json spec) {
    CreateJobRequest r;
    r.spec = std::move(spec);
    return r;
  }

  // Polls until the job is in `state` (or 60 s of wall time pass: generous
  // for a loaded machine).
  static Job WaitFor(JobManager& m, const std::string& name, JobState state) {
    const auto deadline =
        std::chrono::steady_clock::now() + std::chrono::seconds(60);
    while (std::chrono::steady_clock::now() < deadline) {
      absl::StatusOr<Job> job = m.GetJob(name);
      if (job.ok() && job->state == state) return *job;
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
    ADD_FAILURE() << name << " never reached " << JobStateName(state);
    return Job();
  }

  // Every event so far (in batches: older ones come from the store).
  static std::vector<JobEvent> AllEvents(JobManager& m,
                                         const std::string& name) {
    std::vector<JobEvent> all;
    while (true) {
      const int64_t after = all.empty() ? 0 : all.back().sequence;
      absl::StatusOr<JobManager::EventBatch> b =
          m.ReadEvents(name, after, 100000);
      EXPECT_TRUE(b.ok()) << b.status();
      if (!b.ok() || b->events.empty()) return all;
      all.insert(all.end(), b->events.begin(), b->events.end());
    }
  }

  static void ExpectGapFree(const std::vector<JobEvent>& events) {
    for (size_t i = 0; i < events.size(); ++i) {
      EXPECT_EQ(events[i].sequence, static_cast<int64_t>(i + 1));
    }
  }

  // Runs of `pretrained` the runner saw.
  int Runs(const std::string& pretrained) {
    absl::MutexLock lock(&shared_.mu);
    return static_cast<int>(
        std::count(shared_.started.begin(), shared_.started.end(), pretrained));
  }

  TempDir dir_;
  FakeRunner::Shared shared_;
  std::unique_ptr<metrics::Registry> registry_;
  // While set, every store commit fails: from the store's side, the same
  // as the process dying (nothing more is recorded).
  std::atomic<bool> store_fails_{false};
};

TEST_F(JobManagerTest, RunsToSucceededWithGapFreeEvents) {
  auto m = Start();
  absl::StatusOr<Job> job =
      m->CreateJob(Request({{"pretrained", "/a"}, {"tensors", 3}}));
  ASSERT_TRUE(job.ok()) << job.status();
  EXPECT_EQ(job->state, JobState::kQueued);
  EXPECT_TRUE(job->spec["canonical"]);
  Job done = WaitFor(*m, job->name(), JobState::kSucceeded);
  EXPECT_EQ(done.result["kept"], 3);
  EXPECT_EQ(done.result["method"], "fake");
  EXPECT_EQ(done.progress.tensors_done, 3);
  EXPECT_FALSE(done.report_text.empty());
  std::vector<JobEvent> events = AllEvents(*m, job->name());
  ASSERT_EQ(events.size(), 7u);  // QUEUED RUNNING planned 3x tensor SUCCEEDED
  ExpectGapFree(events);
  EXPECT_EQ(events[0].state, JobState::kQueued);
  EXPECT_EQ(events[1].state, JobState::kRunning);
  EXPECT_EQ(events[2].kind, JobEvent::Kind::kProgress);
  EXPECT_EQ(events[5].progress.tensor, "t2");
  EXPECT_DOUBLE_EQ(events[3].progress.eta_seconds, 0.02);
  EXPECT_EQ(events[6].kind, JobEvent::Kind::kStateChange);
  EXPECT_EQ(events[6].state, JobState::kSucceeded);
  EXPECT_EQ(events[6].result["kept"], 3);
  EXPECT_EQ(done.last_sequence, 7);

  // Resume after a sequence number, and the end marker.
  auto tail = m->ReadEvents(job->name(), 5, 1);
  ASSERT_TRUE(tail.ok());
  ASSERT_EQ(tail->events.size(), 1u);
  EXPECT_EQ(tail->events[0].sequence, 6);
  EXPECT_FALSE(tail->end);
  tail = m->ReadEvents(job->name(), 6, 10);
  EXPECT_TRUE(tail->end);
  EXPECT_EQ(m->ReadEvents(job->name(), -1, 1).status().code(),
            absl::StatusCode::kInvalidArgument);

  const std::string text = registry_->Render();
  EXPECT_TRUE(absl::StrContains(text, "tailor_jobs_submitted_total 1\n"));
  EXPECT_TRUE(absl::StrContains(
      text, "tailor_jobs_finished_total{outcome=\"succeeded\"} 1\n"));
  EXPECT_TRUE(absl::StrContains(
      text,
      "tailor_tensors_processed_total{device=\"cpu\",action=\"fused\"} 3\n"));
  EXPECT_TRUE(absl::StrContains(text, "tailor_io_read_bytes_total 300\n"));
  EXPECT_TRUE(absl::StrContains(text, "tailor_jobs{state=\"succeeded\"} 1\n"));
}

TEST_F(JobManagerTest, FailedJobRecordsCodeAndMessage) {
  auto m = Start();
  auto job = m->CreateJob(
      Request({{"pretrained", "/a"}, {"fail", "tensor x: bad shape"}}));
  ASSERT_TRUE(job.ok());
  Job done = WaitFor(*m, job->name(), JobState::kFailed);
  EXPECT_EQ(done.error_code,
            static_cast<int>(absl::StatusCode::kInvalidArgument));
  EXPECT_EQ(done.error_message, "tensor x: bad shape");
  EXPECT_TRUE(AllEvents(*m, job->name()).back().state == JobState::kFailed);
}

TEST_F(JobManagerTest, RequestIdMakesCreateIdempotent) {
  auto m = Start();
  CreateJobRequest r = Request({{"pretrained", "/a"}});
  r.request_id = "5f1c3a4e-0000-4000-8000-000000000001";
  auto first = m->CreateJob(r);
  auto again = m->CreateJob(r);
  ASSERT_TRUE(first.ok() && again.ok());
  EXPECT_EQ(first->name(), again->name());
  r.priority = 3;
  auto other = m->CreateJob(r);
  EXPECT_EQ(other.status().code(), absl::StatusCode::kAlreadyExists);
  EXPECT_TRUE(absl::StrContains(other.status().message(), first->name()));
  r.request_id = std::string(37, 'x');
  EXPECT_EQ(m->CreateJob(r).status().code(),
            absl::StatusCode::kInvalidArgument);
  ListJobsResult all = *m->ListJobs(0, "", "");
  EXPECT_EQ(all.jobs.size(), 1u);
}

// Issue #17 point 1: an existing output is refused at create, naming the
// field and overwrite; a retry of a request_id whose first job already wrote
// it still returns that job.
TEST_F(JobManagerTest, ExistingOutputIsRefusedAtCreateButNotOnARetry) {
  auto m = Start();
  const std::string out = dir_.Join("fused");
  // Blocks: still active when the overwrite below is tried.
  CreateJobRequest r =
      Request({{"pretrained", "/a"}, {"out", out}, {"block", true}});
  r.request_id = "5f1c3a4e-0000-4000-8000-000000000002";
  auto first = m->CreateJob(r);
  ASSERT_TRUE(first.ok()) << first.status();
  ASSERT_TRUE(MakeDirectories(out).ok());  // as if the first job published
  auto again = m->CreateJob(r);
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_EQ(again->name(), first->name());
  CreateJobRequest fresh = Request({{"pretrained", "/a"}, {"out", out}});
  auto refused = m->CreateJob(fresh);
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kAlreadyExists)
      << refused.status();
  EXPECT_TRUE(absl::StartsWith(refused.status().message(), "spec.out: "))
      << refused.status();
  EXPECT_TRUE(absl::StrContains(refused.status().message(), "--overwrite"))
      << refused.status();
  CreateJobRequest replace =
      Request({{"pretrained", "/a"}, {"out", out}, {"overwrite", true}});
  EXPECT_EQ(m->CreateJob(replace).status().code(),
            absl::StatusCode::kFailedPrecondition);  // overlaps `first`'s out
  shared_.released = true;
  WaitFor(*m, first->name(), JobState::kSucceeded);
}

TEST_F(JobManagerTest, BadRequestsAreRefusedWithTheRightCode) {
  JobManagerOptions o;
  o.max_spec_bytes = 200;
  auto m = Start(o);
  auto code = [&](CreateJobRequest r) { return m->CreateJob(r).status(); };
  absl::Status s = code(Request({{"x", 1}}));
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(s.message(), "spec.pretrained: is required");
  EXPECT_EQ(code(Request({{"pretrained", "/denied"}})).code(),
            absl::StatusCode::kPermissionDenied);
  EXPECT_EQ(code(Request({{"pretrained", std::string(300, 'a')}})).code(),
            absl::StatusCode::kResourceExhausted);
  CreateJobRequest r = Request({{"pretrained", "/a"}});
  r.priority = 10;
  s = code(r);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(absl::StartsWith(s.message(), "priority")) << s;
  r.priority = 0;
  r.labels = {{"Team", "x"}};
  s = code(r);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(absl::StrContains(s.message(), "labels")) << s;
  EXPECT_EQ(m->GetJob("fusionJobs/0123456789abcdef").status().code(),
            absl::StatusCode::kNotFound);
  EXPECT_EQ(m->GetJob("jobs/1").status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(absl::StrContains(
      registry_->Render(),
      "tailor_validation_failures_total{reason=\"invalid_argument\"} 3\n"));
}

TEST_F(JobManagerTest, QueueLimitAndPriorityOrder) {
  JobManagerOptions o;
  o.max_queued_jobs = 2;
  auto m = Start(o);
  auto blocker =
      m->CreateJob(Request({{"pretrained", "/block"}, {"block", true}}));
  ASSERT_TRUE(blocker.ok());
  WaitFor(*m, blocker->name(), JobState::kRunning);
  CreateJobRequest low = Request({{"pretrained", "/low"}});
  CreateJobRequest high = Request({{"pretrained", "/high"}});
  high.priority = 5;
  auto l = m->CreateJob(low);
  ASSERT_TRUE(l.ok());
  auto h = m->CreateJob(high);
  ASSERT_TRUE(h.ok());
  EXPECT_EQ(m->CreateJob(Request({{"pretrained", "/c"}})).status().code(),
            absl::StatusCode::kResourceExhausted);
  shared_.released = true;
  WaitFor(*m, h->name(), JobState::kSucceeded);
  WaitFor(*m, l->name(), JobState::kSucceeded);  // before the drain
  m.reset();
  absl::MutexLock lock(&shared_.mu);
  EXPECT_EQ(shared_.started,
            (std::vector<std::string>{"/block", "/high", "/low"}));
}

TEST_F(JobManagerTest, CancelQueuedRunningAndFinished) {
  auto m = Start();
  auto running = m->CreateJob(Request({{"pretrained", "/r"}, {"block", true}}));
  auto queued = m->CreateJob(Request({{"pretrained", "/q"}}));
  ASSERT_TRUE(running.ok() && queued.ok());
  WaitFor(*m, running->name(), JobState::kRunning);
  auto c = m->CancelJob(queued->name());
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->state, JobState::kCancelled);
  auto r = m->CancelJob(running->name());
  ASSERT_TRUE(r.ok());
  EXPECT_TRUE(r->cancel_requested);
  Job done = WaitFor(*m, running->name(), JobState::kCancelled);
  EXPECT_EQ(done.error_code, static_cast<int>(absl::StatusCode::kCancelled));
  EXPECT_EQ(m->CancelJob(running->name()).status().code(),
            absl::StatusCode::kFailedPrecondition);
  for (const std::string& n : {queued->name(), running->name()}) {
    std::vector<JobEvent> events = AllEvents(*m, n);
    ExpectGapFree(events);
    EXPECT_EQ(events.back().state, JobState::kCancelled);
  }
  EXPECT_EQ(m->GetResult(queued->name(), ResultKind::kReport).status().code(),
            absl::StatusCode::kFailedPrecondition);
}

// Issue #16: a patch published to object storage is not streamed by
// ReadJobResult (which serves local files); the error names where it is.
TEST_F(JobManagerTest, ARemotePatchIsReadWhereItWasPublished) {
  auto m = Start();
  auto job = m->CreateJob(Request(
      {{"pretrained", "/r"}, {"patch_out", "s3://bkt/out/p.safetensors"}}));
  ASSERT_TRUE(job.ok()) << job.status();
  WaitFor(*m, job->name(), JobState::kSucceeded);
  absl::StatusOr<JobManager::Result> r =
      m->GetResult(job->name(), ResultKind::kPatch);
  EXPECT_EQ(r.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_TRUE(
      absl::StrContains(r.status().message(), "s3://bkt/out/p.safetensors"))
      << r.status();
  EXPECT_TRUE(m->GetResult(job->name(), ResultKind::kReport).ok());
}

TEST_F(JobManagerTest, ListPagesAndFilters) {
  JobManagerOptions o;
  auto m = Start(o);
  std::vector<std::string> names;
  for (int i = 0; i < 5; ++i) {
    CreateJobRequest r = Request({{"pretrained", "/" + std::to_string(i)}});
    r.labels = {{"team", i % 2 ? "odd" : "even"}};
    names.push_back(m->CreateJob(r)->name());
  }
  for (const std::string& n : names) WaitFor(*m, n, JobState::kSucceeded);
  auto p1 = m->ListJobs(2, "", "");
  ASSERT_TRUE(p1.ok());
  ASSERT_EQ(p1->jobs.size(), 2u);
  EXPECT_EQ(p1->jobs[0].name(), names[4]);  // newest first
  auto p2 = m->ListJobs(2, p1->next_page_token, "");
  auto p3 = m->ListJobs(2, p2->next_page_token, "");
  EXPECT_EQ(p2->jobs[1].name(), names[1]);
  EXPECT_EQ(p3->jobs.size(), 1u);
  EXPECT_EQ(p3->next_page_token, "");
  auto odd = m->ListJobs(0, "", "state=SUCCEEDED AND labels.team=odd");
  ASSERT_TRUE(odd.ok());
  EXPECT_EQ(odd->jobs.size(), 2u);
  EXPECT_EQ(m->ListJobs(0, "", "state=RUNNING")->jobs.size(), 0u);
  EXPECT_EQ(m->ListJobs(0, "", "state=DONE").status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(m->ListJobs(0, "", "owner=me").status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(m->ListJobs(0, "abc", "").status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(m->ListJobs(0, "3", "").status().code(),  // a bare row number
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(m->ListJobs(-1, "", "").status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST_F(JobManagerTest, ListenersHearEveryEventAndTheDrain) {
  auto m = Start();
  auto job = m->CreateJob(Request({{"pretrained", "/a"}, {"block", true}}));
  ASSERT_TRUE(job.ok());
  std::atomic<int> calls{0};
  int64_t id = m->AddListener(job->id, [&] { ++calls; });
  WaitFor(*m, job->name(), JobState::kRunning);
  // RUNNING is visible just before its listeners run.
  for (int i = 0; i < 10000 && calls.load() == 0; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  const int before = calls.load();
  EXPECT_GE(before, 1);
  m->BeginDrain();
  EXPECT_GT(calls.load(), before);
  EXPECT_TRUE(m->draining());
  EXPECT_EQ(m->CreateJob(Request({{"pretrained", "/b"}})).status().code(),
            absl::StatusCode::kUnavailable);
  EXPECT_TRUE(m->WaitForWorkers(absl::Now() + absl::Seconds(10)));
  m->RemoveListener(id);
  Job back = *m->GetJob(job->name());
  EXPECT_EQ(back.state, JobState::kQueued);  // interrupted, not cancelled
}

TEST_F(JobManagerTest, UnfinishedJobsRunAgainAfterARestart) {
  std::string interrupted, queued, finished;
  {
    auto m = Start();
    finished = m->CreateJob(Request({{"pretrained", "/f"}}))->name();
    WaitFor(*m, finished, JobState::kSucceeded);
    interrupted =
        m->CreateJob(Request({{"pretrained", "/i"}, {"block", true}}))->name();
    queued = m->CreateJob(Request({{"pretrained", "/q"}}))->name();
    WaitFor(*m, interrupted, JobState::kRunning);
    m->BeginDrain();
    ASSERT_TRUE(m->WaitForWorkers(absl::Now() + absl::Seconds(10)));
  }
  shared_.released = true;
  auto m = Start();
  Job i = WaitFor(*m, interrupted, JobState::kSucceeded);
  Job q = WaitFor(*m, queued, JobState::kSucceeded);
  EXPECT_EQ(m->GetJob(finished)->state, JobState::kSucceeded);
  std::vector<JobEvent> events = AllEvents(*m, interrupted);
  ExpectGapFree(events);
  // QUEUED RUNNING planned | QUEUED (interrupted) RUNNING planned 2x SUCCEEDED
  ASSERT_EQ(events.size(), 9u);
  EXPECT_EQ(events[3].state, JobState::kQueued);
  EXPECT_EQ(events[3].error_code,
            static_cast<int>(absl::StatusCode::kUnavailable));
  EXPECT_EQ(events[4].state, JobState::kRunning);
  EXPECT_EQ(events[5].kind, JobEvent::Kind::kProgress);
  EXPECT_EQ(i.last_sequence, 9);
  ExpectGapFree(AllEvents(*m, queued));
  // Creation order survives: the finished job is the oldest.
  EXPECT_EQ(m->ListJobs(0, "", "")->jobs.back().name(), finished);
}

// Polls until `path` is gone (or 60 s pass).
bool Gone(const std::string& path) {
  const auto deadline =
      std::chrono::steady_clock::now() + std::chrono::seconds(60);
  while (PathExists(path) && std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  return !PathExists(path);
}

TEST_F(JobManagerTest, JournalLivesUntilTheJobEnds) {
  const std::string journals = dir_.Join("data/journal");
  std::string interrupted, succeeded;
  {
    auto m = Start();
    auto ok = m->CreateJob(Request({{"pretrained", "/s"}}));
    auto failed = m->CreateJob(Request({{"pretrained", "/f"}, {"fail", "x"}}));
    auto cancelled =
        m->CreateJob(Request({{"pretrained", "/c"}, {"block", true}}));
    ASSERT_TRUE(ok.ok() && failed.ok() && cancelled.ok());
    WaitFor(*m, cancelled->name(), JobState::kRunning);
    ASSERT_TRUE(m->CancelJob(cancelled->name()).ok());
    WaitFor(*m, ok->name(), JobState::kSucceeded);
    WaitFor(*m, failed->name(), JobState::kFailed);
    WaitFor(*m, cancelled->name(), JobState::kCancelled);
    {
      absl::MutexLock lock(&shared_.mu);
      ASSERT_EQ(shared_.journals.size(), 3u);
      EXPECT_EQ(shared_.journals[0].first, JoinPath(journals, ok->id));
      for (const auto& [dir, existed] : shared_.journals) {
        EXPECT_FALSE(existed) << dir;
      }
    }
    for (const auto* job : {&*ok, &*failed, &*cancelled}) {
      EXPECT_TRUE(Gone(JoinPath(journals, job->id))) << job->name();
    }
    succeeded = ok->id;

    auto i = m->CreateJob(Request({{"pretrained", "/i"}, {"block", true}}));
    ASSERT_TRUE(i.ok());
    interrupted = i->id;
    WaitFor(*m, i->name(), JobState::kRunning);
    m->BeginDrain();
    ASSERT_TRUE(m->WaitForWorkers(absl::Now() + absl::Seconds(10)));
    EXPECT_EQ(m->GetJob(i->name())->state, JobState::kQueued);
  }
  // The drained job's journal survives; leftovers of a finished job and of
  // an unknown one (a stop between a job's end and the removal) do not.
  EXPECT_TRUE(IsRegularFile(JoinPath(journals, interrupted + "/marker")));
  ASSERT_TRUE(MakeDirectories(JoinPath(journals, succeeded)).ok());
  ASSERT_TRUE(MakeDirectories(JoinPath(journals, "unknown")).ok());
  shared_.released = true;
  auto m = Start();
  EXPECT_FALSE(PathExists(JoinPath(journals, succeeded)));
  EXPECT_FALSE(PathExists(JoinPath(journals, "unknown")));
  WaitFor(*m, "fusionJobs/" + interrupted, JobState::kSucceeded);
  {
    absl::MutexLock lock(&shared_.mu);
    ASSERT_EQ(shared_.journals.size(), 5u);
    EXPECT_EQ(shared_.journals[4].first, JoinPath(journals, interrupted));
    EXPECT_TRUE(shared_.journals[4].second);  // the rerun found its journal
  }
  EXPECT_TRUE(Gone(JoinPath(journals, interrupted)));
}

TEST_F(JobManagerTest, DevicePoolSerialisesConcurrentJobsWithinBudgets) {
  shared_.devices = {{"cpu", "cpu", int64_t{1} << 30},
                     {"cuda:0", "GPU-fake0", int64_t{1} << 30},
                     {"cuda:1", "GPU-fake1", 0}};  // memory unknown
  JobManagerOptions options;
  options.max_concurrent_jobs = 2;
  options.device_budgets["cuda"] = DeviceBudget{100, 0};
  options.device_budgets["cuda:0"] = DeviceBudget{0, 0.5};  // wins
  auto m = Start(options);
  // One 80-byte tensor fits on cuda:1 at a time; cuda:0 has room to spare.
  nlohmann::json spec = {{"pretrained", "/a"},
                         {"tensors", 4},
                         {"tensor_bytes", 80},
                         {"hold_ms", 5},
                         {"device", "cuda:1"}};
  auto a = m->CreateJob(Request(spec));
  auto b = m->CreateJob(Request(spec));
  ASSERT_TRUE(a.ok() && b.ok());
  WaitFor(*m, a->name(), JobState::kSucceeded);
  WaitFor(*m, b->name(), JobState::kSucceeded);
  {
    absl::MutexLock lock(&shared_.mu);
    EXPECT_EQ(shared_.most_leased["cuda:1"], 1);
    EXPECT_EQ(shared_.most_leased.count("cuda:0"), 0u);
  }
  // "auto" uses the CUDA devices only; cuda:0 has the most room.
  spec["device"] = "auto";
  auto c = m->CreateJob(Request(spec));
  ASSERT_TRUE(c.ok());
  WaitFor(*m, c->name(), JobState::kSucceeded);
  const std::string text = registry_->Render();
  EXPECT_TRUE(absl::StrContains(text,
                                "tailor_tensors_processed_total{device=\"GPU-"
                                "fake1\",action=\"fused\"} 8\n"))
      << text;
  EXPECT_TRUE(absl::StrContains(text,
                                "tailor_tensors_processed_total{device=\"GPU-"
                                "fake0\",action=\"fused\"} 4\n"))
      << text;
  EXPECT_TRUE(absl::StrContains(
      text, "tailor_tensor_duration_seconds_count{device=\"GPU-fake0\"} 4"));
  EXPECT_TRUE(absl::StrContains(
      text, "tailor_device_memory_budget_bytes{device=\"GPU-fake1\"} 100\n"));
  EXPECT_TRUE(absl::StrContains(
      text,
      "tailor_device_memory_budget_bytes{device=\"GPU-fake0\"} 536870912\n"));
  EXPECT_TRUE(absl::StrContains(
      text, "tailor_device_memory_in_use_bytes{device=\"GPU-fake1\"} 0\n"));
  EXPECT_TRUE(absl::StrContains(text, "tailor_process_resident_memory_bytes "));
  // The two jobs on cuda:1 waited for each other.
  EXPECT_TRUE(absl::StrContains(
      text, "tailor_device_wait_seconds_total{device=\"GPU-fake1\"} "));

  // A tensor larger than every permitted budget fails its job at once.
  spec["tensor_bytes"] = 101;
  spec["device"] = "cuda:1";
  auto d = m->CreateJob(Request(spec));
  ASSERT_TRUE(d.ok());
  Job failed = WaitFor(*m, d->name(), JobState::kFailed);
  EXPECT_EQ(failed.error_code,
            static_cast<int>(absl::StatusCode::kResourceExhausted));
  EXPECT_TRUE(absl::StrContains(failed.error_message, "tensor 't0'"))
      << failed.error_message;

  // A device the pool lacks is refused at creation.
  spec["device"] = "cuda:7";
  auto e = m->CreateJob(Request(spec));
  EXPECT_EQ(e.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_TRUE(absl::StartsWith(e.status().message(), "spec.device: "))
      << e.status();
}

TEST_F(JobManagerTest, CancelStopsAJobWaitingForDeviceMemory) {
  JobManagerOptions options;
  options.max_concurrent_jobs = 2;
  options.device_budgets["cpu"] = DeviceBudget{100, 0};
  auto m = Start(options);
  auto a = m->CreateJob(Request({{"pretrained", "/a"},
                                 {"tensors", 1},
                                 {"tensor_bytes", 80},
                                 {"hold_ms", 2000}}));
  ASSERT_TRUE(a.ok());
  WaitFor(*m, a->name(), JobState::kRunning);
  std::this_thread::sleep_for(std::chrono::milliseconds(50));
  auto b = m->CreateJob(
      Request({{"pretrained", "/b"}, {"tensors", 1}, {"tensor_bytes", 80}}));
  ASSERT_TRUE(b.ok());
  WaitFor(*m, b->name(), JobState::kRunning);
  std::this_thread::sleep_for(std::chrono::milliseconds(100));  // waits
  ASSERT_TRUE(m->CancelJob(b->name()).ok());
  Job cancelled = WaitFor(*m, b->name(), JobState::kCancelled);
  EXPECT_TRUE(absl::StrContains(cancelled.error_message, "device memory"))
      << cancelled.error_message;
  EXPECT_EQ(m->GetJob(a->name())->state, JobState::kRunning);
  ASSERT_TRUE(m->CancelJob(a->name()).ok());
}

// Issue #10 point 10: after_sequence up to INT64_MAX is "nothing more",
// never undefined behaviour.
TEST_F(JobManagerTest, ReadEventsPastTheEndIsEmpty) {
  auto m = Start();
  std::vector<std::string> names;
  for (int i = 0; i < 14; ++i) {
    names.push_back(
        m->CreateJob(Request({{"pretrained", absl::StrCat("/", i)}}))->name());
  }
  for (const std::string& n : names) WaitFor(*m, n, JobState::kSucceeded);
  auto blocked = m->CreateJob(Request({{"pretrained", "/b"}, {"block", true}}));
  ASSERT_TRUE(blocked.ok());
  WaitFor(*m, blocked->name(), JobState::kRunning);
  const int64_t last = m->GetJob(names[0])->last_sequence;
  for (int64_t after : {last, last + 1, int64_t{1} << 40,
                        std::numeric_limits<int64_t>::max() - 1,
                        std::numeric_limits<int64_t>::max()}) {
    for (size_t max :
         {size_t{0}, size_t{1}, std::numeric_limits<size_t>::max()}) {
      auto b = m->ReadEvents(names[0], after, max);
      ASSERT_TRUE(b.ok()) << after << ": " << b.status();
      EXPECT_TRUE(b->events.empty()) << after;
      EXPECT_TRUE(b->end) << after;  // finished: the stream may end
      auto r = m->ReadEvents(blocked->name(), after, max);
      ASSERT_TRUE(r.ok());
      EXPECT_TRUE(r->events.empty());
      EXPECT_FALSE(r->end);  // running: more may come
    }
  }
  auto all = m->ReadEvents(names[0], 0, std::numeric_limits<size_t>::max());
  ASSERT_TRUE(all.ok());
  EXPECT_EQ(static_cast<int64_t>(all->events.size()), last);
  EXPECT_TRUE(all->end);
  shared_.released = true;
}

// Issue #10 point 15: terms on the same key AND, as the proto says.
TEST_F(JobManagerTest, SameKeyFilterTermsAnd) {
  auto m = Start();
  std::vector<std::string> names;
  for (const char* team : {"a", "b", "a"}) {
    CreateJobRequest r = Request({{"pretrained", std::string("/") + team}});
    r.labels = {{"team", team}};
    names.push_back(m->CreateJob(r)->name());
  }
  for (const std::string& n : names) WaitFor(*m, n, JobState::kSucceeded);
  EXPECT_EQ(m->ListJobs(0, "", "labels.team=a")->jobs.size(), 2u);
  EXPECT_EQ(m->ListJobs(0, "", "labels.team=b")->jobs.size(), 1u);
  EXPECT_EQ(m->ListJobs(0, "", "labels.team=a AND labels.team=b")->jobs.size(),
            0u);
  EXPECT_EQ(m->ListJobs(0, "", "labels.team=b AND labels.team=a")->jobs.size(),
            0u);
  EXPECT_EQ(m->ListJobs(0, "", "labels.team=a AND labels.team=a")->jobs.size(),
            2u);
  EXPECT_EQ(m->ListJobs(0, "", "state=SUCCEEDED AND state=FAILED")->jobs.size(),
            0u);
  EXPECT_EQ(m->ListJobs(0, "", "state=FAILED AND state=SUCCEEDED")->jobs.size(),
            0u);
  EXPECT_EQ(
      m->ListJobs(0, "", "state=SUCCEEDED AND state=SUCCEEDED")->jobs.size(),
      3u);
}

// Issue #10 point 22: a page token is bound to its filter.
TEST_F(JobManagerTest, PageTokenIsBoundToItsFilter) {
  auto m = Start();
  for (int i = 0; i < 6; ++i) {
    CreateJobRequest r = Request({{"pretrained", absl::StrCat("/", i)}});
    r.labels = {{"team", i % 2 ? "odd" : "even"}};
    WaitFor(*m, m->CreateJob(r)->name(), JobState::kSucceeded);
  }
  auto p1 = m->ListJobs(1, "", "labels.team=odd");
  ASSERT_TRUE(p1.ok());
  ASSERT_FALSE(p1->next_page_token.empty());
  // The same filter, even spelled in another order, continues.
  auto p2 = m->ListJobs(1, p1->next_page_token, "labels.team=odd");
  ASSERT_TRUE(p2.ok()) << p2.status();
  EXPECT_EQ(p2->jobs[0].labels.at("team"), "odd");
  EXPECT_NE(p2->jobs[0].id, p1->jobs[0].id);
  auto two = m->ListJobs(1, "", "state=SUCCEEDED AND labels.team=odd");
  EXPECT_TRUE(m->ListJobs(1, two->next_page_token,
                          "labels.team=odd AND state=SUCCEEDED")
                  .ok());
  for (const char* other : {"", "labels.team=even", "state=SUCCEEDED"}) {
    auto r = m->ListJobs(1, p1->next_page_token, other);
    ASSERT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument) << other;
    EXPECT_TRUE(absl::StartsWith(r.status().message(), "page_token: "))
        << r.status();
  }
  // A damaged token is refused too.
  std::string bad = p1->next_page_token;
  bad[bad.size() / 2] = bad[bad.size() / 2] == 'A' ? 'B' : 'A';
  EXPECT_EQ(m->ListJobs(1, bad, "labels.team=odd").status().code(),
            absl::StatusCode::kInvalidArgument);
}

// Issue #10 point 22: only the newest events stay in memory; older ones
// are read from the store, also after a restart.
TEST_F(JobManagerTest, EventCacheIsBoundedAndOlderEventsComeFromTheStore) {
  JobManagerOptions o;
  o.cached_events = 8;
  std::string name;
  {
    auto m = Start(o);
    name =
        m->CreateJob(Request({{"pretrained", "/a"}, {"tensors", 60}}))->name();
    WaitFor(*m, name, JobState::kSucceeded);
    std::vector<JobEvent> events = AllEvents(*m, name);
    ASSERT_EQ(events.size(), 64u);  // QUEUED RUNNING planned 60 SUCCEEDED
    ExpectGapFree(events);
    auto memory_only = m->ReadEvents(name, 0, 10, /*may_read_store=*/false);
    ASSERT_TRUE(memory_only.ok());
    EXPECT_TRUE(memory_only->in_store);
    EXPECT_TRUE(memory_only->events.empty());
    // A finished job keeps a short tail.
    auto tail = m->ReadEvents(name, 60, 10, false);
    ASSERT_TRUE(tail.ok());
    EXPECT_FALSE(tail->in_store);
    EXPECT_EQ(tail->events.size(), 4u);
    EXPECT_TRUE(tail->end);
    EXPECT_TRUE(m->ReadEvents(name, 40, 10, false)->in_store);
  }
  auto m = Start(o);
  EXPECT_TRUE(m->ReadEvents(name, 0, 10, false)->in_store);
  std::vector<JobEvent> events = AllEvents(*m, name);
  ASSERT_EQ(events.size(), 64u);
  ExpectGapFree(events);
  EXPECT_EQ(events.back().state, JobState::kSucceeded);
}

// Issue #10 point 13: a cancel acknowledged for a RUNNING job is durable:
// if the server dies before the run ends, the restart cancels the job and
// nothing runs again.
TEST_F(JobManagerTest, CancelOfARunningJobSurvivesACrash) {
  std::string name;
  {
    auto m = Start();
    auto job = m->CreateJob(Request(
        {{"pretrained", "/c"}, {"block", true}, {"ignore_cancel", true}}));
    ASSERT_TRUE(job.ok());
    name = job->name();
    WaitFor(*m, name, JobState::kRunning);
    auto c = m->CancelJob(name);
    ASSERT_TRUE(c.ok()) << c.status();
    EXPECT_TRUE(c->cancel_requested);
    EXPECT_EQ(c->state, JobState::kRunning);
    // The process "dies" now: nothing more reaches the store, although the
    // run goes on to succeed (in memory).
    store_fails_ = true;
    shared_.released = true;
    WaitFor(*m, name, JobState::kSucceeded);
  }
  store_fails_ = false;
  shared_.released = false;
  auto m = Start();
  Job job = *m->GetJob(name);
  EXPECT_EQ(job.state, JobState::kCancelled);
  EXPECT_EQ(job.error_code, static_cast<int>(absl::StatusCode::kCancelled));
  EXPECT_TRUE(absl::StrContains(job.error_message, "server stopped"))
      << job.error_message;
  std::vector<JobEvent> events = AllEvents(*m, name);
  ExpectGapFree(events);
  EXPECT_EQ(events.back().state, JobState::kCancelled);
  std::this_thread::sleep_for(std::chrono::milliseconds(100));
  EXPECT_EQ(Runs("/c"), 1);  // never run again
  EXPECT_FALSE(PathExists(dir_.Join("data/journal/" + job.id)));
}

// Poisoned jobs: a job the server died running twice is FAILED at startup;
// drained runs do not count.
TEST_F(JobManagerTest, JobThatTheServerDiedRunningTwiceIsFailed) {
  std::string poisoned, drained;
  for (int life = 0; life < 2; ++life) {
    auto m = Start();
    if (life == 0) {
      poisoned = m->CreateJob(Request({{"pretrained", "/p"}, {"block", true}}))
                     ->name();
    }
    WaitFor(*m, poisoned, JobState::kRunning);
    EXPECT_EQ(m->GetJob(poisoned)->unfinished_runs, life + 1);
    store_fails_ = true;  // the server dies while the job runs
    m.reset();
    store_fails_ = false;
  }
  for (int life = 0; life < 3; ++life) {
    auto m = Start();
    if (life == 0) {
      EXPECT_EQ(m->GetJob(poisoned)->state, JobState::kFailed);
      drained = m->CreateJob(Request({{"pretrained", "/d"}, {"block", true}}))
                    ->name();
    }
    WaitFor(*m, drained, JobState::kRunning);
    m->BeginDrain();  // a clean stop: the job goes back to the queue
    ASSERT_TRUE(m->WaitForWorkers(absl::Now() + absl::Seconds(10)));
    EXPECT_EQ(m->GetJob(drained)->state, JobState::kQueued);
    EXPECT_EQ(m->GetJob(drained)->unfinished_runs, 0);
  }
  shared_.released = true;
  auto m = Start();
  WaitFor(*m, drained, JobState::kSucceeded);
  Job p = *m->GetJob(poisoned);
  EXPECT_EQ(p.state, JobState::kFailed);
  EXPECT_EQ(p.error_message.rfind(
                "the server stopped twice while running this job; not "
                "retried",
                0),
            0u)
      << p.error_message;
  EXPECT_EQ(Runs("/p"), 2);
  EXPECT_EQ(Runs("/d"), 4);
  std::vector<JobEvent> events = AllEvents(*m, poisoned);
  ExpectGapFree(events);
  EXPECT_EQ(events.back().state, JobState::kFailed);
}

// Issue #10 point 14: when the store refuses the outcome, watchers still
// see it and the stream ends; the store gets it once it can, and startup
// works while the store refuses commits.
TEST_F(JobManagerTest, OutcomeTheStoreRefusedIsPublishedAndSavedLater) {
  std::string name;
  {
    auto m = Start();
    name =
        m->CreateJob(Request({{"pretrained", "/a"}, {"block", true}}))->name();
    WaitFor(*m, name, JobState::kRunning);
    store_fails_ = true;
    shared_.released = true;
    Job done = WaitFor(*m, name, JobState::kSucceeded);
    EXPECT_EQ(done.result["method"], "fake");
    std::vector<JobEvent> events = AllEvents(*m, name);
    ExpectGapFree(events);
    EXPECT_EQ(events.back().state, JobState::kSucceeded);
    auto end = m->ReadEvents(name, events.back().sequence, 10);
    ASSERT_TRUE(end.ok());
    EXPECT_TRUE(end->end);  // watchers finish
    // The store takes it once it can (the workers retry every few seconds).
    store_fails_ = false;
    bool saved = false;
    for (int i = 0; i < 300 && !saved; ++i) {
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
      auto store = JobStore::Open(dir_.Join("data/jobs.db"));
      ASSERT_TRUE(store.ok()) << store.status();
      auto jobs = (*store)->LoadJobs();
      ASSERT_TRUE(jobs.ok());
      saved = jobs->at(0).state == JobState::kSucceeded;
    }
    EXPECT_TRUE(saved) << "the store never got the outcome";
  }
  store_fails_ = true;  // startup with a store that refuses every commit
  {
    auto m = Start();
    ASSERT_NE(m, nullptr);
    EXPECT_EQ(m->GetJob(name)->state, JobState::kSucceeded);
    std::vector<JobEvent> events = AllEvents(*m, name);
    ExpectGapFree(events);
    EXPECT_EQ(events.back().state, JobState::kSucceeded);
  }
  store_fails_ = false;
}

TEST_F(JobManagerTest, RequeueTheStoreRefusesAtStartupStillRuns) {
  std::string name;
  {
    auto m = Start();
    name =
        m->CreateJob(Request({{"pretrained", "/a"}, {"block", true}}))->name();
    WaitFor(*m, name, JobState::kRunning);
    store_fails_ = true;  // dies while running
  }
  shared_.released = true;
  auto m = Start();  // store still failing: starts anyway
  ASSERT_NE(m, nullptr);
  EXPECT_EQ(m->GetJob(name)->state, JobState::kQueued);
  store_fails_ = false;
  WaitFor(*m, name, JobState::kSucceeded);
  std::vector<JobEvent> events = AllEvents(*m, name);
  ExpectGapFree(events);
}

TEST_F(JobManagerTest, UnknownDeviceMemoryNeedsAnAbsoluteBudget) {
  shared_.devices = {{"cpu", "cpu", 0}};
  JobManagerOptions options;
  options.data_dir = dir_.Join("data");
  auto m = JobManager::Create(options, std::make_unique<FakeRunner>(&shared_),
                              nullptr);
  ASSERT_EQ(m.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(absl::StartsWith(m.status().message(), "device-memory-budget: "))
      << m.status();
}

}  // namespace
}  // namespace tailor::jobs

namespace tailor::jobs {
namespace {

// Issue #14 point 3: a job belongs to its creator.
TEST_F(JobManagerTest, OtherPrincipalsJobsAreNotFoundAndListedOnlyToAdmins) {
  auto m = Start();
  const Caller alice{"alice", false, {}}, bob{"bob", false, {}},
      root{"root", true, {}};
  auto a = m->CreateJob(Request({{"pretrained", "/a"}}), alice);
  auto b = m->CreateJob(Request({{"pretrained", "/b"}}), bob);
  ASSERT_TRUE(a.ok() && b.ok()) << a.status() << b.status();
  EXPECT_EQ(a->creator, "alice");
  WaitFor(*m, a->name(), JobState::kSucceeded);
  WaitFor(*m, b->name(), JobState::kSucceeded);

  // Bob's view of Alice's job: exactly a missing job's answers.
  const std::string missing = "fusionJobs/0000000000000000";
  for (const std::string& name : {a->name(), missing}) {
    absl::Status get = m->GetJob(name, bob).status();
    EXPECT_EQ(get.code(), absl::StatusCode::kNotFound) << name;
    EXPECT_EQ(get.message(), absl::StrCat("no job named ", name));
    EXPECT_EQ(m->CancelJob(name, bob).status().code(),
              absl::StatusCode::kNotFound);
    EXPECT_EQ(m->ReadEvents(name, 0, 10, true, bob).status().code(),
              absl::StatusCode::kNotFound);
    EXPECT_EQ(m->GetResult(name, ResultKind::kReport, bob).status().code(),
              absl::StatusCode::kNotFound);
  }
  // Her own, and an admin's.
  for (const Caller& c : {alice, root}) {
    EXPECT_TRUE(m->GetJob(a->name(), c).ok());
    EXPECT_TRUE(m->ReadEvents(a->name(), 0, 10, true, c).ok());
    EXPECT_TRUE(m->GetResult(a->name(), ResultKind::kReport, c).ok());
  }
  auto names = [&](const Caller& c) {
    std::set<std::string> out;
    absl::StatusOr<ListJobsResult> list = m->ListJobs(0, "", "", c);
    EXPECT_TRUE(list.ok()) << list.status();
    if (list.ok()) {
      for (const Job& j : list->jobs) out.insert(j.name());
    }
    return out;
  };
  EXPECT_EQ(names(alice), std::set<std::string>{a->name()});
  EXPECT_EQ(names(bob), std::set<std::string>{b->name()});
  EXPECT_EQ(names(root), (std::set<std::string>{a->name(), b->name()}));
  EXPECT_TRUE(names(Caller{"carol", false, {}}).empty());

  // The creator survives a restart (the store's creator column).
  m.reset();
  m = Start();
  absl::StatusOr<Job> reloaded = m->GetJob(a->name(), alice);
  ASSERT_TRUE(reloaded.ok()) << reloaded.status();
  EXPECT_EQ(reloaded->creator, "alice");
  EXPECT_EQ(m->GetJob(a->name(), bob).status().code(),
            absl::StatusCode::kNotFound);
}

TEST_F(JobManagerTest, CancelActsOnlyOnTheCallersOwnJobs) {
  auto m = Start();
  const Caller alice{"alice", false, {}}, bob{"bob", false, {}};
  auto a =
      m->CreateJob(Request({{"pretrained", "/r"}, {"block", true}}), alice);
  ASSERT_TRUE(a.ok());
  WaitFor(*m, a->name(), JobState::kRunning);
  EXPECT_EQ(m->CancelJob(a->name(), bob).status().code(),
            absl::StatusCode::kNotFound);
  EXPECT_FALSE(m->GetJob(a->name())->cancel_requested);
  ASSERT_TRUE(m->CancelJob(a->name(), alice).ok());
  WaitFor(*m, a->name(), JobState::kCancelled);
}

TEST_F(JobManagerTest, RequestIdIsPerPrincipal) {
  auto m = Start();
  CreateJobRequest r = Request({{"pretrained", "/a"}});
  r.request_id = "shared-id";
  auto alice = m->CreateJob(r, Caller{"alice", false, {}});
  auto alice_again = m->CreateJob(r, Caller{"alice", false, {}});
  auto bob = m->CreateJob(r, Caller{"bob", false, {}});
  ASSERT_TRUE(alice.ok() && alice_again.ok() && bob.ok()) << bob.status();
  EXPECT_EQ(alice->name(), alice_again->name());
  EXPECT_NE(alice->name(), bob->name());  // not Alice's job handed to Bob
  EXPECT_EQ(bob->creator, "bob");
  // Bob reusing the id for another request conflicts with his own job only.
  r.priority = 5;
  auto conflict = m->CreateJob(r, Caller{"bob", false, {}});
  EXPECT_EQ(conflict.status().code(), absl::StatusCode::kAlreadyExists);
  EXPECT_TRUE(absl::StrContains(conflict.status().message(), bob->name()));
  // And after a restart.
  m.reset();
  m = Start();
  r.priority = 0;
  EXPECT_EQ(m->CreateJob(r, Caller{"bob", false, {}})->name(), bob->name());
  EXPECT_EQ(m->CreateJob(r, Caller{"alice", false, {}})->name(), alice->name());
}

TEST_F(JobManagerTest, CallerRootsAreCheckedOnTopOfTheServers) {
  auto m = Start();
  const Caller alice{"alice", false, {"/alice/"}};
  EXPECT_TRUE(m->CreateJob(Request({{"pretrained", "/alice/m"}}), alice).ok());
  EXPECT_EQ(
      m->CreateJob(Request({{"pretrained", "/bob/m"}}), alice).status().code(),
      absl::StatusCode::kPermissionDenied);
  // The server's own check still applies, and callers without roots use
  // the server's alone.
  EXPECT_EQ(
      m->CreateJob(Request({{"pretrained", "/denied"}}), alice).status().code(),
      absl::StatusCode::kPermissionDenied);
  EXPECT_TRUE(m->CreateJob(Request({{"pretrained", "/bob/m"}}),
                           Caller{"bob", false, {}})
                  .ok());
}

TEST_F(JobManagerTest, PerPrincipalQueuedQuota) {
  JobManagerOptions o;
  o.max_queued_jobs_per_principal = 2;
  auto m = Start(o);
  const Caller alice{"alice", false, {}}, bob{"bob", false, {}};
  // One blocked job keeps the others queued.
  auto blocker =
      m->CreateJob(Request({{"pretrained", "/r"}, {"block", true}}), bob);
  ASSERT_TRUE(blocker.ok());
  WaitFor(*m, blocker->name(), JobState::kRunning);
  ASSERT_TRUE(m->CreateJob(Request({{"pretrained", "/1"}}), alice).ok());
  ASSERT_TRUE(m->CreateJob(Request({{"pretrained", "/2"}}), alice).ok());
  auto third = m->CreateJob(Request({{"pretrained", "/3"}}), alice);
  EXPECT_EQ(third.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_TRUE(absl::StrContains(third.status().message(), "alice"))
      << third.status();
  // Bob's quota is his own.
  EXPECT_TRUE(m->CreateJob(Request({{"pretrained", "/4"}}), bob).ok());
  shared_.released.store(true);
}

// Issue #17 point 7: DeleteJob removes a finished job's record, events and
// journal (durably), never its outputs; unfinished jobs are refused.
TEST_F(JobManagerTest, DeleteRemovesFinishedJobsOnlyAndNeverOutputs) {
  auto m = Start();
  const Caller alice{"alice", false, {}}, bob{"bob", false, {}};
  CreateJobRequest r = Request({{"pretrained", "/a"}, {"tensors", 3}});
  r.request_id = "delete-me-1";
  auto done = m->CreateJob(r, alice);
  auto running =
      m->CreateJob(Request({{"pretrained", "/r"}, {"block", true}}), alice);
  ASSERT_TRUE(done.ok() && running.ok()) << done.status() << running.status();
  WaitFor(*m, done->name(), JobState::kSucceeded);
  WaitFor(*m, running->name(), JobState::kRunning);
  auto queued = m->CreateJob(Request({{"pretrained", "/q"}}), alice);
  ASSERT_TRUE(queued.ok());

  // Unfinished jobs: FAILED_PRECONDITION, and they stay.
  for (const Job* j : {&*running, &*queued}) {
    absl::Status s = m->DeleteJob(j->name(), alice);
    EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition) << s;
    EXPECT_TRUE(absl::StrContains(s.message(), "cancel it first")) << s;
    EXPECT_TRUE(m->GetJob(j->name()).ok());
  }
  // Another principal's job, a missing one: NOT_FOUND.
  EXPECT_EQ(m->DeleteJob(done->name(), bob).code(),
            absl::StatusCode::kNotFound);
  EXPECT_EQ(m->DeleteJob("fusionJobs/0000000000000000").code(),
            absl::StatusCode::kNotFound);
  EXPECT_EQ(m->DeleteJob("bogus").code(), absl::StatusCode::kInvalidArgument);

  // What the job published (stands for its fused checkpoint) and a leftover
  // journal.
  const std::string output = dir_.Join("published.safetensors");
  ASSERT_TRUE(WriteFileAtomically(output, "weights").ok());
  const std::string journal = dir_.Join("data/journal/" + done->id);
  ASSERT_TRUE(MakeDirectories(journal).ok());
  std::atomic<int> heard{0};
  absl::Status after_delete;
  const int64_t listener = m->AddListener(done->id, [&] {
    ++heard;
    after_delete = m->ReadEvents(done->name(), 0, 1, false).status();
  });

  ASSERT_TRUE(m->DeleteJob(done->name(), alice).ok());
  m->RemoveListener(listener);
  EXPECT_EQ(heard.load(), 1);
  EXPECT_EQ(after_delete.code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(m->GetJob(done->name()).status().code(),
            absl::StatusCode::kNotFound);
  EXPECT_EQ(m->ReadEvents(done->name(), 0, 10).status().code(),
            absl::StatusCode::kNotFound);
  EXPECT_EQ(m->DeleteJob(done->name(), alice).code(),
            absl::StatusCode::kNotFound);
  absl::StatusOr<ListJobsResult> list = m->ListJobs(0, "", "");
  ASSERT_TRUE(list.ok());
  for (const Job& j : list->jobs) EXPECT_NE(j.name(), done->name());
  EXPECT_EQ(list->jobs.size(), 2u);
  EXPECT_FALSE(PathExists(journal));
  EXPECT_EQ(ReadFileToString(output, 100).value_or(""), "weights");
  std::string text = registry_->Render();
  EXPECT_TRUE(absl::StrContains(text, "tailor_jobs{state=\"succeeded\"} 0\n"))
      << text;
  EXPECT_TRUE(absl::StrContains(
      text, "tailor_jobs_deleted_total{reason=\"request\"} 1\n"));
  EXPECT_TRUE(absl::StrContains(
      text, "tailor_jobs_deleted_total{reason=\"retention\"} 0\n"));

  // The request_id is free again; the deletion survives a restart.
  auto again = m->CreateJob(r, alice);
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_NE(again->id, done->id);
  shared_.released.store(true);
  WaitFor(*m, again->name(), JobState::kSucceeded);
  m.reset();
  m = Start();
  EXPECT_EQ(m->GetJob(done->name()).status().code(),
            absl::StatusCode::kNotFound);
  EXPECT_TRUE(m->GetJob(again->name()).ok());
  EXPECT_EQ(m->ListJobs(0, "", "")->jobs.size(), 3u);
}

TEST_F(JobManagerTest, DeleteTheStoreRefusesKeepsTheJob) {
  auto m = Start();
  auto job = m->CreateJob(Request({{"pretrained", "/a"}}));
  ASSERT_TRUE(job.ok());
  const Job done = WaitFor(*m, job->name(), JobState::kSucceeded);
  store_fails_.store(true);
  EXPECT_EQ(m->DeleteJob(job->name()).code(),
            absl::StatusCode::kResourceExhausted);
  store_fails_.store(false);
  EXPECT_TRUE(m->GetJob(job->name()).ok());
  EXPECT_EQ(AllEvents(*m, job->name()).size(),
            static_cast<size_t>(done.last_sequence));
  m.reset();
  m = Start();
  EXPECT_TRUE(m->GetJob(job->name()).ok());
}

// Retention: finished jobs older than job_retention go, unfinished ones and
// younger ones stay; 0 keeps everything.
TEST_F(JobManagerTest, RetentionDeletesOnlyExpiredFinishedJobs) {
  JobManagerOptions options;
  options.job_retention = absl::Hours(1);
  options.retention_sweep_interval = absl::Hours(1);  // sweeps by hand here
  auto m = Start(options);
  auto done = m->CreateJob(Request({{"pretrained", "/a"}}));
  auto running = m->CreateJob(Request({{"pretrained", "/r"}, {"block", true}}));
  ASSERT_TRUE(done.ok() && running.ok());
  WaitFor(*m, done->name(), JobState::kSucceeded);
  WaitFor(*m, running->name(), JobState::kRunning);
  EXPECT_EQ(m->DeleteExpiredJobs(absl::Now()), 0);
  EXPECT_EQ(m->DeleteExpiredJobs(absl::Now() + absl::Minutes(50)), 0);
  EXPECT_TRUE(m->GetJob(done->name()).ok());
  EXPECT_EQ(m->DeleteExpiredJobs(absl::Now() + absl::Minutes(61)), 1);
  EXPECT_EQ(m->GetJob(done->name()).status().code(),
            absl::StatusCode::kNotFound);
  EXPECT_EQ(m->DeleteExpiredJobs(absl::Now() + absl::Hours(1000)), 0);
  EXPECT_TRUE(m->GetJob(running->name()).ok());
  EXPECT_TRUE(
      absl::StrContains(registry_->Render(),
                        "tailor_jobs_deleted_total{reason=\"retention\"} 1\n"));
  shared_.released.store(true);
  WaitFor(*m, running->name(), JobState::kSucceeded);
  m.reset();

  options.job_retention = absl::ZeroDuration();  // forever
  m = Start(options);
  EXPECT_EQ(m->DeleteExpiredJobs(absl::Now() + absl::Hours(24 * 36500)), 0);
  EXPECT_TRUE(m->GetJob(running->name()).ok());
}

// The sweep runs at startup (a server down for long) and in the background.
TEST_F(JobManagerTest, RetentionSweepsAtStartupAndInTheBackground) {
  auto m = Start();  // the default: 30 days
  auto first = m->CreateJob(Request({{"pretrained", "/a"}}));
  ASSERT_TRUE(first.ok());
  WaitFor(*m, first->name(), JobState::kSucceeded);
  m.reset();
  absl::SleepFor(absl::Milliseconds(50));

  JobManagerOptions options;
  options.job_retention = absl::Milliseconds(10);
  options.retention_sweep_interval = absl::Hours(1);  // no background sweep
  m = Start(options);
  // Gone before any interval passed: the startup sweep.
  EXPECT_EQ(m->GetJob(first->name()).status().code(),
            absl::StatusCode::kNotFound);
  EXPECT_TRUE(
      absl::StrContains(registry_->Render(),
                        "tailor_jobs_deleted_total{reason=\"retention\"} 1\n"));
  m.reset();

  options.job_retention = absl::Seconds(1);
  options.retention_sweep_interval = absl::Milliseconds(50);
  m = Start(options);
  auto second = m->CreateJob(Request({{"pretrained", "/b"}}));
  ASSERT_TRUE(second.ok());
  // Polls (60 s, generous for a loaded machine) until the background sweep
  // took it.
  const auto deadline =
      std::chrono::steady_clock::now() + std::chrono::seconds(60);
  while (m->GetJob(second->name()).ok() &&
         std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  EXPECT_EQ(m->GetJob(second->name()).status().code(),
            absl::StatusCode::kNotFound);
  EXPECT_EQ(Runs("/b"), 1);  // it ran to its end before it went
}

}  // namespace
}  // namespace tailor::jobs
