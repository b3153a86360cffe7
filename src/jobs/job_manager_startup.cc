// JobManager::Load: the job table from the store at startup, and the
// recovery of what the last process left (requeued, cancelled and poisoned
// jobs, stale journals and staging).

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "jobs/job_manager.h"
#include "jobs/run_outcome.h"
#include "util/file_util.h"
#include "util/log.h"
#include "util/status_macros.h"

namespace tailor::jobs {

absl::Status JobManager::Load() {
  TAILOR_ASSIGN_OR_RETURN(std::vector<Job> jobs, store_->LoadJobs());
  std::vector<std::string> requeue, cancel, poisoned;
  const size_t keep = std::max<size_t>(options_.cached_events, 1);
  std::vector<nlohmann::json> specs;  // for the staging cleanup
  for (const Job& job : jobs) specs.push_back(job.spec);
  {
    absl::MutexLock lock(&mu_);
    for (Job& job : jobs) {
      // Only the newest events: the rest stay in the store until a watcher
      // replays them.
      const int64_t after =
          std::max<int64_t>(0, job.last_sequence - static_cast<int64_t>(keep));
      TAILOR_ASSIGN_OR_RETURN(std::vector<JobEvent> events,
                              store_->LoadEvents(job.id, after));
      const bool complete =
          static_cast<int64_t>(events.size()) == job.last_sequence - after &&
          (events.empty() || (events.front().sequence == after + 1 &&
                              events.back().sequence == job.last_sequence));
      if (!complete) {
        return absl::DataLossError(
            absl::StrCat("job store: fusionJobs/", job.id, " has ",
                         events.size(), " events after sequence ", after,
                         " but its last sequence is ", job.last_sequence));
      }
      next_order_ = std::max(next_order_, job.create_order + 1);
      if (!job.request_id.empty()) {
        by_request_id_[RequestKey(job.creator, job.request_id)] = job.id;
      }
      by_order_[job.create_order] = job.id;
      if (!IsTerminal(job.state) && job.cancel_requested) {
        // Cancelled while it ran, and the server stopped before the run
        // ended: the cancel was acknowledged, so the job never runs again.
        cancel.push_back(job.id);
      } else if (job.state == JobState::kRunning &&
                 job.unfinished_runs >= options_.max_interrupted_runs) {
        poisoned.push_back(job.id);
      } else if (job.state == JobState::kQueued) {
        queue_.emplace(-job.priority, job.create_order, job.id);
      } else if (job.state == JobState::kRunning) {
        requeue.push_back(job.id);
      }
      Entry& e = jobs_[job.id];
      e.job = std::move(job);
      e.events.assign(std::make_move_iterator(events.begin()),
                      std::make_move_iterator(events.end()));
      TrimCache(e);
    }
  }
  // Journals of finished (or unknown) jobs are leftovers of a stop between
  // a job's end and its journal's removal. They go first: on a full data
  // volume that frees the space the commits below need.
  const std::string journals = JoinPath(options_.data_dir, kJournalDirName);
  if (IsDirectory(journals)) {
    TAILOR_ASSIGN_OR_RETURN(std::vector<std::string> names,
                            ListDirectory(journals));
    absl::ReaderMutexLock lock(&mu_);
    for (const std::string& id : names) {
      auto it = jobs_.find(id);
      if (it == jobs_.end() || IsTerminal(it->second.job.state) ||
          std::count(cancel.begin(), cancel.end(), id) > 0 ||
          std::count(poisoned.begin(), poisoned.end(), id) > 0) {
        RemoveJournal(id);
      }
    }
  }
  // Staging left beside any stored job's outputs by a writer that was killed
  // (issue #10 point 17); live writers' are locked and stay.
  for (const nlohmann::json& spec : specs) runner_->CleanStaging(spec);
  // Startup must not depend on a free byte: these changes are published in
  // memory even if the store cannot take them yet (FlushUnsaved retries).
  auto finish = [&](const std::string& id, JobState state,
                    const absl::Status& why) {
    absl::Status s = Record(
        id,
        [&](Job& job) {
          job.state = state;
          job.end_time = absl::Now();
          job.error_code = static_cast<int>(why.code());
          job.error_message = std::string(why.message());
          job.unfinished_runs = 0;
          return std::optional<JobEvent>(StateEvent(state, why));
        },
        /*keep_on_failure=*/true);
    if (!s.ok()) Log(LogLevel::kError, "fusionJobs/" + id, s.ToString());
    Log(state == JobState::kFailed ? LogLevel::kError : LogLevel::kInfo,
        "fusionJobs/" + id,
        absl::StrCat(JobStateName(state), " at startup: ", why.message()));
    if (metrics_) metrics_->finished->Increment({OutcomeLabel(state)});
  };
  for (const std::string& id : cancel) {
    finish(id, JobState::kCancelled,
           absl::CancelledError(
               "cancelled; the server stopped before the run ended, and "
               "the job does not run again"));
  }
  for (const std::string& id : poisoned) {
    const int n = options_.max_interrupted_runs;
    finish(id, JobState::kFailed,
           absl::InternalError(absl::StrCat(
               "the server stopped ",
               n == 1   ? "once"
               : n == 2 ? "twice"
                        : absl::StrCat(n, " times"),
               " while running this job; not retried (a job that crashes "
               "the server is not run again; submit it anew once the cause "
               "is fixed)")));
  }
  // Jobs that were running when the server stopped run again; their journal
  // lets them continue from their last completed tensor.
  for (const std::string& id : requeue) {
    JobEvent e = StateEvent(
        JobState::kQueued,
        absl::UnavailableError("the server stopped while the job ran; it "
                               "runs again"));
    absl::Status s = Record(
        id,
        [&](Job& job) {
          job.state = JobState::kQueued;
          job.progress = JobProgress();
          return std::optional<JobEvent>(e);
        },
        /*keep_on_failure=*/true);
    if (!s.ok()) Log(LogLevel::kError, "fusionJobs/" + id, s.ToString());
    absl::MutexLock lock(&mu_);
    const Job& job = jobs_[id].job;
    queue_.emplace(-job.priority, job.create_order, job.id);
    Log(LogLevel::kInfo, job.name(),
        absl::StrCat("requeued after restart (", job.unfinished_runs,
                     " interrupted run", job.unfinished_runs == 1 ? "" : "s",
                     ")"));
  }
  absl::MutexLock lock(&mu_);
  if (!jobs_.empty()) {
    Log(LogLevel::kInfo, "",
        absl::StrCat("loaded ", jobs_.size(), " jobs, ", queue_.size(),
                     " queued"));
  }
  return absl::OkStatus();
}

}  // namespace tailor::jobs
