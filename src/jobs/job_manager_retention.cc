// JobManager's deletion of finished jobs: by request (DeleteJob) and by
// the retention sweep (DeleteExpiredJobs, SweepLoop), both through Delete.

#include <string>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "jobs/job_manager.h"
#include "util/log.h"
#include "util/status_macros.h"

namespace tailor::jobs {

absl::Status JobManager::DeleteJob(absl::string_view name,
                                   const Caller& caller) {
  std::string id;
  {
    absl::ReaderMutexLock lock(&mu_);
    TAILOR_ASSIGN_OR_RETURN(const Entry* e, Find(name, caller));
    id = e->job.id;
  }
  absl::Status s = Delete(id, "request");
  if (s.code() == absl::StatusCode::kNotFound) {
    // Deleted by another call meanwhile.
    return absl::NotFoundError(absl::StrCat("no job named ", name));
  }
  if (s.ok()) Log(LogLevel::kInfo, std::string(name), "deleted");
  return s;
}

absl::Status JobManager::Delete(const std::string& id, const char* reason) {
  // write_mu_: no Record of the job runs meanwhile (its state cannot change
  // under the check below, and nothing re-adds it after the removal).
  absl::MutexLock write_lock(&write_mu_);
  {
    absl::ReaderMutexLock lock(&mu_);
    auto it = jobs_.find(id);
    if (it == jobs_.end()) return absl::NotFoundError("fusionJobs/" + id);
    const Job& job = it->second.job;
    if (!IsTerminal(job.state)) {
      return absl::FailedPreconditionError(absl::StrCat(
          job.name(), " is ", JobStateName(job.state),
          "; only finished jobs (SUCCEEDED, FAILED, CANCELLED) can be "
          "deleted: cancel it first"));
    }
  }
  // Durable first: a restart after this returns never finds the job.
  TAILOR_RETURN_IF_ERROR(store_->Delete(id));
  {
    absl::MutexLock lock(&mu_);
    auto it = jobs_.find(id);
    const Job& job = it->second.job;
    by_order_.erase(job.create_order);
    if (!job.request_id.empty()) {
      by_request_id_.erase(RequestKey(job.creator, job.request_id));
    }
    unsaved_.erase(id);
    jobs_.erase(it);
  }
  RemoveJournal(id);  // normally gone when the job ended
  if (metrics_) metrics_->deleted->Increment({reason});
  Notify(id);  // its watchers end (NOT_FOUND)
  return absl::OkStatus();
}

int JobManager::DeleteExpiredJobs(absl::Time now) {
  if (options_.job_retention <= absl::ZeroDuration()) return 0;
  const absl::Time cutoff = now - options_.job_retention;
  std::vector<std::string> expired;
  {
    absl::ReaderMutexLock lock(&mu_);
    for (const auto& [id, e] : jobs_) {
      if (!IsTerminal(e.job.state)) continue;
      // A finished job always has its end time; the creation time stands
      // in for one that somehow lacks it.
      const absl::Time ended = e.job.end_time != absl::InfinitePast()
                                   ? e.job.end_time
                                   : e.job.create_time;
      if (ended < cutoff) expired.push_back(id);
    }
  }
  int deleted = 0;
  for (const std::string& id : expired) {
    const absl::Status s = Delete(id, "retention");
    if (s.code() == absl::StatusCode::kNotFound) continue;  // deleted already
    LogFields(
        s.ok() ? LogLevel::kInfo : LogLevel::kWarning,
        {{"msg", "audit"},
         {"principal", "tailord"},
         {"role", "system"},
         {"method", "RetentionSweep"},
         {"job", "fusionJobs/" + id},
         {"peer", "-"},
         {"outcome", absl::AsciiStrToLower(absl::StatusCodeToString(s.code()))},
         {"retention",
          absl::StrCat(absl::ToInt64Seconds(options_.job_retention), "s")}});
    if (s.ok()) {
      ++deleted;
    } else {
      // The store refused: tried again at the next sweep.
      Log(LogLevel::kWarning, "fusionJobs/" + id,
          absl::StrCat("retention: cannot delete: ", s.message()));
    }
  }
  return deleted;
}

void JobManager::SweepLoop() {
  while (true) {
    {
      absl::MutexLock lock(&mu_);
      mu_.AwaitWithTimeout(absl::Condition(&draining_),
                           options_.retention_sweep_interval);
      if (draining_) return;
    }
    DeleteExpiredJobs(absl::Now());
  }
}

}  // namespace tailor::jobs
