// The job manager's workers: take the next queued job, run it on the
// device pool, record its outcome (JobManager::WorkerLoop, RunJob), and the
// journal each run keeps.

#include <algorithm>
#include <atomic>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "jobs/job_manager.h"
#include "jobs/job_progress.h"
#include "jobs/proc_stats.h"
#include "jobs/run_outcome.h"
#include "util/file_util.h"
#include "util/log.h"
#include "util/status_macros.h"

namespace tailor::jobs {

void JobManager::WorkerLoop() {
  while (true) {
    std::string id;
    bool flush = false;
    {
      absl::MutexLock lock(&mu_);
      // Wakes now and then to retry commits the store refused.
      if (!mu_.AwaitWithTimeout(absl::Condition(this, &JobManager::WorkReady),
                                absl::Seconds(5))) {
        flush = !unsaved_.empty();
      } else if (draining_) {
        break;
      } else {
        id = std::get<2>(*queue_.begin());
        queue_.erase(queue_.begin());
        Entry& e = jobs_[id];
        // A cancel requested while the job was between the queue and a
        // worker still stops it.
        e.stop->store(e.job.cancel_requested);
        e.interrupted = false;
        e.running = true;
      }
    }
    if (flush) FlushUnsaved();
    if (id.empty()) continue;
    RunJob(id);
    absl::MutexLock lock(&mu_);
    // Once its outcome is recorded the job may have been deleted already.
    if (auto it = jobs_.find(id); it != jobs_.end()) it->second.running = false;
  }
  absl::MutexLock lock(&mu_);
  --active_workers_;
}

void JobManager::RunJob(const std::string& id) {
  const std::string name = "fusionJobs/" + id;
  const absl::Time start = absl::Now();
  nlohmann::json spec;
  absl::Time created;
  std::atomic<bool>* stop;
  {
    absl::MutexLock lock(&mu_);
    Entry& e = jobs_[id];
    spec = e.job.spec;
    created = e.job.create_time;
    stop = e.stop.get();
  }
  // Counted before the run: a run the server does not survive stays
  // counted (Load fails a job after max_interrupted_runs of them).
  absl::Status s = Record(id, [&](Job& job) {
    job.state = JobState::kRunning;
    job.start_time = start;
    job.progress = JobProgress();
    ++job.unfinished_runs;
    return std::optional<JobEvent>(StateEvent(JobState::kRunning));
  });
  if (!s.ok()) {
    // Not started: the job stays QUEUED and is tried again shortly.
    Log(LogLevel::kError, name,
        absl::StrCat("cannot record the start (", s.ToString(),
                     "); the job stays queued"));
    absl::SleepFor(absl::Seconds(1));
    absl::MutexLock lock(&mu_);
    const Job& job = jobs_[id].job;
    if (job.state == JobState::kQueued) {
      queue_.emplace(-job.priority, job.create_order, id);
    }
    return;
  }
  if (metrics_) {
    metrics_->queue_wait->Observe({}, absl::ToDoubleSeconds(start - created));
  }
  Log(LogLevel::kInfo, name, "running");
  JobProgressAdapter progress(
      id, metrics_.get(),
      [this](const std::string& device) { return DeviceLabel(device); },
      [this, &id](const JobEvent& event) {
        return Record(id, [&](Job& job) {
          if (event.kind == JobEvent::Kind::kProgress) {
            job.progress = event.progress;
          }
          return std::optional<JobEvent>(event);
        });
      });
  absl::StatusOr<std::vector<int>> permitted =
      pool_->Permitted(spec.value("device", "auto"));
  absl::StatusOr<nlohmann::json> report =
      permitted.ok() ? absl::UnknownError("not run") : permitted.status();
  if (permitted.ok()) {
    // Waits for device memory give up when the job is cancelled or drained.
    PoolScheduler scheduler(pool_.get(), *std::move(permitted), stop);
    RunOptions options;
    options.progress = &progress;
    options.cancel = stop;
    options.journal_dir = JournalDir(id);
    options.journal_reserve_bytes = options_.journal_reserve_bytes;
    options.journal_max_bytes = options_.journal_max_bytes;
    if (options.journal_max_bytes == 0) {
      // Half of what is free now: other jobs' journals and the store keep
      // the rest.
      options.journal_max_bytes =
          FreeBytes(options_.data_dir).value_or(uint64_t{1} << 30) / 2;
    }
    options.device_scheduler = &scheduler;
    options.workers = std::max(1, options_.workers);
    report = runner_->Run(spec, options);
  }
  runner_->CleanStaging(spec);  // leftovers of killed writers, any outcome

  bool interrupted, user_cancel;
  {
    absl::MutexLock lock(&mu_);
    Entry& e = jobs_[id];
    interrupted = e.interrupted;
    user_cancel = e.job.cancel_requested;
  }
  const absl::Time end = absl::Now();
  const RunOutcome outcome =
      ClassifyRun(report, spec, interrupted, user_cancel);
  const JobState final_state = outcome.state;
  const JobEvent& event = outcome.event;
  const std::string& report_text = outcome.report_text;
  const nlohmann::json& summary = outcome.summary;
  // Metrics first, so that a client that sees the final state also sees
  // it counted.
  if (final_state != JobState::kQueued) {
    Log(final_state == JobState::kFailed ? LogLevel::kWarning : LogLevel::kInfo,
        name,
        absl::StrCat(JobStateName(final_state), report.ok() ? "" : ": ",
                     report.status().message()));
    if (metrics_) {
      const std::string outcome = OutcomeLabel(final_state);
      metrics_->finished->Increment({outcome});
      metrics_->job_duration->Observe({outcome},
                                      absl::ToDoubleSeconds(end - start));
      if (final_state == JobState::kSucceeded) {
        metrics_->last_success->Set(
            {}, absl::ToDoubleSeconds(end - absl::UnixEpoch()));
        uint64_t written = report_text.size();
        for (const char* key : {"out", "patch_out"}) {
          const std::string uri = spec.value(key, "");
          if (uri.empty()) continue;
          absl::StatusOr<std::string> path = runner_->ResolveOutput(uri);
          if (path.ok()) written += PathBytes(*path);
        }
        metrics_->written_bytes->Increment({}, static_cast<double>(written));
      }
    }
  } else {
    Log(LogLevel::kInfo, name, "interrupted by the drain; stays queued");
  }
  const Update finish = [&](Job& job) {
    job.state = final_state;
    job.error_code = event.error_code;
    job.error_message = event.error_message;
    job.unfinished_runs = 0;  // the run ended (drained runs too)
    if (final_state == JobState::kQueued) {
      job.progress = JobProgress();
    } else {
      job.end_time = end;
      job.result = summary;
      job.report_text = report_text;
    }
    return std::optional<JobEvent>(event);
  };
  s = Record(id, finish);
  if (!s.ok()) {
    Log(LogLevel::kError, name,
        absl::StrCat("cannot record the outcome: ", s.ToString()));
    // The job is over (its outputs may be published): its journal is of no
    // more use, and may be what filled the data volume.
    if (final_state != JobState::kQueued) RemoveJournal(id);
    for (int attempt = 1; attempt <= 3 && !s.ok(); ++attempt) {
      absl::SleepFor(absl::Milliseconds(200 * attempt));
      s = Record(id, finish);
    }
    if (!s.ok()) {
      // Watchers and clients see the outcome now; the store gets it when
      // it can (FlushUnsaved). Until then a restart finds the job RUNNING
      // and runs it again.
      s = Record(id, finish, /*keep_on_failure=*/true);
      Log(LogLevel::kError, name,
          absl::StrCat(JobStateName(final_state),
                       " is published in memory only; the store refused it "
                       "(",
                       s.message(), "); retrying in the background"));
    }
    return;
  }
  if (final_state != JobState::kQueued) RemoveJournal(id);
}

std::string JobManager::JournalDir(const std::string& id) const {
  return JoinPath(JoinPath(options_.data_dir, kJournalDirName), id);
}

void JobManager::RemoveJournal(const std::string& id) const {
  const absl::Status s = RemoveAll(JournalDir(id));
  if (!s.ok()) {
    Log(LogLevel::kWarning, "fusionJobs/" + id,
        absl::StrCat("could not remove the journal: ", s.ToString()));
  }
}

}  // namespace tailor::jobs
