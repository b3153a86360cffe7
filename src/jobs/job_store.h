#ifndef TAILOR_JOBS_JOB_STORE_H_
#define TAILOR_JOBS_JOB_STORE_H_

#include <memory>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "jobs/job.h"

struct sqlite3;

namespace tailor::jobs {

// The durable record of every job and its events: one SQLite database in
// WAL mode. A job is one row (its JSON); its events are rows keyed by
// (job id, sequence). Every write is one transaction, so a job's row and the
// events that led to it are always consistent after a crash.
//
// Thread-safe: one connection, serialised by a mutex.
class JobStore {
 public:
  // Opens (creating if needed) the database at `path`.
  static absl::StatusOr<std::unique_ptr<JobStore>> Open(
      const std::string& path);
  ~JobStore();
  JobStore(const JobStore&) = delete;
  JobStore& operator=(const JobStore&) = delete;

  // Writes `job` (insert or replace) and appends `events` (whose sequence
  // numbers must be new for the job), atomically and durably.
  absl::Status Commit(const Job& job, const std::vector<JobEvent>& events);

  // Every job, in creation order.
  absl::StatusOr<std::vector<Job>> LoadJobs();
  // The events of one job, in sequence order.
  absl::StatusOr<std::vector<JobEvent>> LoadEvents(const std::string& job_id);

 private:
  explicit JobStore(sqlite3* db) : db_(db) {}
  absl::Status Exec(const char* sql) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  absl::Mutex mu_;  // guards the connection (every statement on db_)
  sqlite3* const db_ ABSL_PT_GUARDED_BY(mu_);
};

}  // namespace tailor::jobs

#endif  // TAILOR_JOBS_JOB_STORE_H_
