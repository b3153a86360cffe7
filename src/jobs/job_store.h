#ifndef TAILOR_JOBS_JOB_STORE_H_
#define TAILOR_JOBS_JOB_STORE_H_

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/functional/function_ref.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "jobs/job.h"

struct sqlite3;

namespace tailor::jobs {

// The durable record of every job and its events: one SQLite database in
// WAL mode. A job is one row (its JSON); its events are rows keyed by
// (job id, sequence). The job's creator (its principal) is a column too; a
// store from before that column gets it, empty, when opened. Every write is one
// transaction, so a job's row and the events that led to it are always
// consistent after a crash.
//
// Loss detection. Every transaction also advances a commit counter in the
// database (table `meta`, with the store's random id). With a marker path,
// the store keeps a small file there (JSON {format, store_id, commit_seq},
// written atomically and fsynced) that records the counter after every
// marked commit (job creations, state changes, cancel requests). Open()
// refuses (DATA_LOSS, naming the files and what it found) a database that
// is missing or empty while the marker exists, that fails SQLite's
// quick_check, that belongs to another store id, or whose counter is behind
// the marker's -- a truncated jobs.db, a deleted or damaged WAL after a
// crash: acknowledged jobs would be silently forgotten or re-run. Recovery
// is the operator's decision: move jobs.db, jobs.db-wal, jobs.db-shm and
// the marker aside to start with an empty store (or restore a backup).
//
// Thread-safe: one connection, serialised by a mutex.
class JobStore {
 public:
  // Opens (creating if needed) the database at `path`; `marker_path`
  // (optional) is the loss-detection marker described above.
  static absl::StatusOr<std::unique_ptr<JobStore>> Open(
      const std::string& path, const std::string& marker_path = "");
  ~JobStore();
  JobStore(const JobStore&) = delete;
  JobStore& operator=(const JobStore&) = delete;

  // Writes `job` (insert or replace) and appends `events` (whose sequence
  // numbers must be new for the job), atomically and durably. `mark`: also
  // advance the marker (a failure to write it is logged, not returned: the
  // marker may lag the database, never lead it).
  absl::Status Commit(const Job& job, const std::vector<JobEvent>& events,
                      bool mark = false);

  // Removes job `job_id`'s row and all its events in one durable
  // transaction that also advances the marker (a deletion lost with a
  // damaged WAL shows as a store behind its marker). Deleting a job that is
  // not stored is OK (nothing changes but the counter).
  absl::Status Delete(const std::string& job_id);

  // Every job, in creation order.
  absl::StatusOr<std::vector<Job>> LoadJobs();
  // The events of one job with sequence > after_sequence, in sequence
  // order; at most `limit` of them (negative: all).
  absl::StatusOr<std::vector<JobEvent>> LoadEvents(const std::string& job_id,
                                                   int64_t after_sequence = 0,
                                                   int64_t limit = -1);

  // The commit counter (transactions committed over the store's life).
  int64_t commit_seq() const;

  // Tests: `fault` runs before every commit; an error it returns is the
  // commit's (nothing is written).
  void SetFaultForTesting(std::function<absl::Status()> fault);

 private:
  JobStore(sqlite3* db, std::string path, std::string marker_path)
      : db_(db), path_(std::move(path)), marker_path_(std::move(marker_path)) {}
  absl::Status Exec(const char* sql) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Runs `body` in one IMMEDIATE transaction that also advances the commit
  // counter; rolls back if either fails. After the commit, `mark` rewrites
  // the store.id marker (a failure there is logged, not returned).
  absl::Status Transact(absl::FunctionRef<absl::Status()> body, bool mark)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Reads/creates the meta rows and checks them against the marker.
  absl::Status CheckIdentity(bool marker_exists, const std::string& marker_id,
                             int64_t marker_seq)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::Status WriteMarker() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Adds the jobs table's creator column to a store that lacks it.
  absl::Status MigrateCreatorColumn() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  mutable absl::Mutex mu_;  // guards the connection and the fields below
  sqlite3* const db_ ABSL_PT_GUARDED_BY(mu_);
  const std::string path_;
  const std::string marker_path_;
  std::string store_id_ ABSL_GUARDED_BY(mu_);
  int64_t commit_seq_ ABSL_GUARDED_BY(mu_) = 0;
  std::function<absl::Status()> fault_ ABSL_GUARDED_BY(mu_);
};

}  // namespace tailor::jobs

#endif  // TAILOR_JOBS_JOB_STORE_H_
