#ifndef TAILOR_JOBS_JOB_MANAGER_H_
#define TAILOR_JOBS_JOB_MANAGER_H_

#include <atomic>
#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <thread>
#include <tuple>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "jobs/caller.h"
#include "jobs/device_pool.h"
#include "jobs/job.h"
#include "jobs/job_metrics.h"
#include "jobs/job_request.h"  // CreateJobRequest
#include "jobs/job_runner.h"
#include "jobs/job_store.h"
#include "jobs/runner_devices.h"  // kDefaultCpuBudget, kDefaultCudaBudget
#include "metrics/registry.h"

namespace tailor::jobs {

// Subdirectory of the data directory holding one journal per unfinished job.
inline constexpr char kJournalDirName[] = "journal";
// File in the data directory that lets the job store detect a database that
// lost acknowledged jobs (JobStore, "Loss detection").
inline constexpr char kStoreMarkerName[] = "store.id";

struct JobManagerOptions {
  // Directory of the job store (jobs.db) and of the journals of unfinished
  // jobs (journal/<job id>/, see RunOptions::journal_dir); created if
  // missing.
  std::string data_dir;
  // Jobs that run at the same time, >= 1.
  int max_concurrent_jobs = 1;
  // Tensors each job computes at once (RunOptions::workers), each taking
  // its device from the pool.
  int workers = 1;
  // QUEUED jobs allowed at once; more creates are RESOURCE_EXHAUSTED.
  int max_queued_jobs = 100;
  // QUEUED jobs one creator (Caller::principal) may have at once; more of
  // its creates are RESOURCE_EXHAUSTED. 0: no per-principal quota.
  int max_queued_jobs_per_principal = 0;
  // Largest accepted spec (its JSON), bytes; larger is RESOURCE_EXHAUSTED.
  size_t max_spec_bytes = 64 << 10;
  // Memory budgets of the device pool, by "cpu", "cuda" (every CUDA
  // device) or "cuda:N" (wins over "cuda"). Unset: kDefaultCpuBudget and
  // kDefaultCudaBudget of the device's memory. A key naming a device the
  // runner lacks is ignored (logged).
  std::map<std::string, DeviceBudget> device_budgets;
  // A job whose runs were cut short by the server dying (a crash, a kill,
  // a drain past its deadline) this many times in a row is FAILED at
  // startup ("the server stopped twice while running this job; not
  // retried") instead of being run again: a job that crashes the server
  // would otherwise crash it on every restart. Drained runs (SIGTERM) do
  // not count. >= 1.
  int max_interrupted_runs = 2;
  // Journal limits (see RunOptions::journal_max_bytes): at most this many
  // bytes per job's journal (0: half the data volume's free space when the
  // job starts), and journal writes always leave this much free space for
  // the job store. Past either the job continues without its journal.
  uint64_t journal_max_bytes = 0;
  uint64_t journal_reserve_bytes = uint64_t{256} << 20;
  // Events kept in memory per unfinished job (older ones are read from the
  // store when a watcher replays them); a finished job keeps its last few.
  size_t cached_events = 1024;
  // Retention: a finished job whose end is longer ago than this is deleted
  // (as DeleteJob does: record, events and journal; never its outputs) by a
  // sweep at startup and every retention_sweep_interval after. Zero or
  // negative: finished jobs are kept forever.
  absl::Duration job_retention = absl::Hours(24 * 30);
  absl::Duration retention_sweep_interval = absl::Minutes(1);
  // Tests: runs before every store commit; an error fails the commit.
  std::function<absl::Status()> store_fault_for_testing;
};

struct ListJobsResult {
  std::vector<Job> jobs;  // newest first
  std::string next_page_token;
};

enum class ResultKind { kPatch, kReport };

// The service core: validates and queues jobs, runs them on worker threads
// it owns (a priority queue, `max_concurrent_jobs` at a time), records every
// state change and progress event durably (JobStore) with a gap-free
// per-job sequence, and lets watchers follow them. Jobs QUEUED or RUNNING
// when the process stopped run again after a restart. Each run keeps a
// per-tensor journal in <data_dir>/journal/<job id>/ (RunOptions::
// journal_dir), so a job interrupted by a crash or a drain continues from its
// last completed tensor, with outputs byte-identical to an uninterrupted
// run's (the engine publishes nothing until a job succeeds). The journal is
// removed when the job ends (succeeded, failed, cancelled), and at startup
// for jobs that have ended.
//
// Devices: a pool (jobs/device_pool.h) of the runner's devices, each with a
// memory budget. Every fused tensor of a running job reserves its estimated
// working memory on one device its spec's `device` permits (DevicePool::
// Permitted: "auto" is every CUDA device when there is one, else the CPU),
// the one with the most free budget, and waits while none has room; so
// concurrent jobs share devices without over-committing them, and one
// job's tensors may run on different devices.
//
// Faults: a job whose runs the server did not survive max_interrupted_runs
// times is FAILED at startup (a poisoned job); a RUNNING job with a stored
// cancel request is CANCELLED at startup. When the store refuses a change
// that must not wait (a run's outcome, startup's requeues), the change is
// published in memory anyway and committed later (the workers retry every
// few seconds); until then a restart finds the store's older state. The
// journal is bounded (journal_max_bytes, journal_reserve_bytes), so it
// cannot take the space the store needs.
//
// Memory: each job keeps its newest events only (cached_events; a few once
// it ended); older ones are read from the store on demand.
//
// Deletion: a finished job can be deleted (DeleteJob), and is deleted by
// the retention sweep once it ended job_retention ago (at startup and every
// retention_sweep_interval): its store row and events go in one durable
// transaction, then its journal and its place in memory; its outputs are
// never touched. Deleting takes write_mu_, so no Record of the job runs
// meanwhile; code that finds a job after recording its final state must
// look it up again (it may be gone).
//
// Callers: every job records the principal that created it (Job::creator).
// The methods that take a Caller act only on that caller's own jobs unless
// it is an admin: another principal's job is NOT_FOUND, exactly as a job
// that does not exist, and ListJobs leaves it out. request_id idempotency is
// per principal. The overloads without a Caller act as Caller::System() (an
// admin): for the process itself and tests, never for an RPC.
//
// Thread-safe. Methods never wait on a running job; ReadEvents with
// may_read_store=false, AddListener and RemoveListener only take short
// in-memory locks (safe in RPC reactions); the others may read or write the
// store (an fsync).
class JobManager {
 public:
  // Opens the store under options.data_dir, requeues unfinished jobs and
  // starts the workers. `registry` may be null (no metrics); if set, it
  // must outlive the manager and hold no other job manager's families.
  static absl::StatusOr<std::unique_ptr<JobManager>> Create(
      const JobManagerOptions& options, std::unique_ptr<JobRunner> runner,
      metrics::Registry* registry);
  // Drains (BeginDrain) and joins the workers.
  ~JobManager();

  // Validates and queues a job. INVALID_ARGUMENT (spec, priority, labels,
  // request_id: the message names the field), NOT_FOUND / PERMISSION_DENIED
  // (input URIs), RESOURCE_EXHAUSTED (queue full, spec too large),
  // ALREADY_EXISTS (request_id reused with a different request),
  // UNAVAILABLE (draining). The same request_id with the same request
  // from the same principal returns the existing job. The job's creator is
  // caller.principal; RESOURCE_EXHAUSTED past the caller's queued-job
  // quota (max_queued_jobs_per_principal).
  absl::StatusOr<Job> CreateJob(const CreateJobRequest& request,
                                const Caller& caller);
  absl::StatusOr<Job> CreateJob(const CreateJobRequest& request) {
    return CreateJob(request, Caller::System());
  }

  // NOT_FOUND if there is no such job (or the caller may not see it);
  // INVALID_ARGUMENT for a bad name.
  absl::StatusOr<Job> GetJob(absl::string_view name,
                             const Caller& caller) const;
  absl::StatusOr<Job> GetJob(absl::string_view name) const {
    return GetJob(name, Caller::System());
  }

  // Newest first. page_size: 0 means 50, capped at 1000, negative is
  // INVALID_ARGUMENT. filter: terms joined by " AND ", each `state=STATE`
  // or `labels.KEY=VALUE`; every term must hold, so two terms on the same
  // key with different values match nothing. A page token is bound to the
  // filter it was issued for: with another filter it is INVALID_ARGUMENT.
  // Only the jobs the caller may see.
  absl::StatusOr<ListJobsResult> ListJobs(int page_size,
                                          const std::string& page_token,
                                          const std::string& filter,
                                          const Caller& caller) const;
  absl::StatusOr<ListJobsResult> ListJobs(int page_size,
                                          const std::string& page_token,
                                          const std::string& filter) const {
    return ListJobs(page_size, page_token, filter, Caller::System());
  }

  // QUEUED: CANCELLED at once. RUNNING: records the request durably, then
  // asks the run to stop (it ends CANCELLED unless it finishes first; if the
  // server dies first, the job is CANCELLED at the restart and never runs
  // again). Finished: FAILED_PRECONDITION. NOT_FOUND for a job the
  // caller may not see.
  absl::StatusOr<Job> CancelJob(absl::string_view name, const Caller& caller);
  absl::StatusOr<Job> CancelJob(absl::string_view name) {
    return CancelJob(name, Caller::System());
  }

  // Deletes a finished job (AIP-135): its store record and events, in one
  // durable transaction, then its journal (if any is left) and its place in
  // memory; its outputs are never touched. Listeners of the job are
  // notified (their ReadEvents is NOT_FOUND from then on), and
  // tailor_jobs_deleted_total{reason="request"} counts it.
  // FAILED_PRECONDITION for a QUEUED or RUNNING job; NOT_FOUND for a job
  // the caller may not see (or already deleted).
  absl::Status DeleteJob(absl::string_view name, const Caller& caller);
  absl::Status DeleteJob(absl::string_view name) {
    return DeleteJob(name, Caller::System());
  }

  // The retention sweep: deletes every finished job that ended before
  // now - job_retention (nothing when job_retention is not positive), with
  // one audit log line each (msg=audit method=RetentionSweep), counted in
  // tailor_jobs_deleted_total{reason="retention"}. Returns how many were
  // deleted. Runs at startup and on a background thread; public for tests.
  int DeleteExpiredJobs(absl::Time now);

  struct EventBatch {
    std::vector<JobEvent> events;
    // True when the job is finished and `events` reach its last event.
    bool end = false;
    // Set (with no events) when the next event is no longer cached and
    // may_read_store was false: call again with may_read_store.
    bool in_store = false;
  };
  // Up to `max` events with sequence > after_sequence, in order. An
  // after_sequence at or past the last event gives none (and `end` once
  // the job is finished). Events older than the in-memory cache are read
  // from the store (a disk read) unless !may_read_store. NOT_FOUND for a
  // job the caller may not see.
  absl::StatusOr<EventBatch> ReadEvents(absl::string_view name,
                                        int64_t after_sequence, size_t max,
                                        bool may_read_store,
                                        const Caller& caller) const;
  absl::StatusOr<EventBatch> ReadEvents(absl::string_view name,
                                        int64_t after_sequence, size_t max,
                                        bool may_read_store = true) const {
    return ReadEvents(name, after_sequence, max, may_read_store,
                      Caller::System());
  }

  // `listener` runs on some internal thread after every new event of job
  // `job_id` (inside Record, under the store-writer lock write_mu_ and the
  // listener lock: it delays every job's next change), and once when
  // draining begins (under the listener lock only). It must be quick. It may
  // call ReadEvents with may_read_store=false, GetJob and draining() (they
  // take only mu_); AddListener, RemoveListener and the methods that record
  // a change (CreateJob, CancelJob) would deadlock.
  int64_t AddListener(const std::string& job_id,
                      std::function<void()> listener);
  // After this returns the listener is not running and will not run again.
  void RemoveListener(int64_t id);

  // A succeeded job's result: a file path (kPatch) or the bytes (kReport).
  // FAILED_PRECONDITION if the job has not succeeded or has no such result.
  // A file comes with the size and SHA-256 recorded when the job succeeded:
  // whoever serves it must check them (the file may have been replaced).
  struct Result {
    std::string path;  // set for files
    std::string data;  // set when inline
    bool is_inline = false;
    std::string sha256;  // files: the published digest (hex)
    uint64_t size = 0;   // files: the published size
  };
  // NOT_FOUND for a job the caller may not see.
  absl::StatusOr<Result> GetResult(absl::string_view name, ResultKind kind,
                                   const Caller& caller) const;
  absl::StatusOr<Result> GetResult(absl::string_view name,
                                   ResultKind kind) const {
    return GetResult(name, kind, Caller::System());
  }

  // Starts the drain: new creates are UNAVAILABLE, no queued job starts,
  // running jobs stop before their next tensor and go back to QUEUED (they
  // run again after a restart, continuing from their journal), listeners
  // are notified, the retention sweeps stop. Idempotent.
  void BeginDrain();
  bool draining() const;
  // Waits until every worker has stopped or `deadline` passes; true if they
  // stopped.
  bool WaitForWorkers(absl::Time deadline);
  // For an exit that does not wait for the jobs (tailord's second signal):
  // waits for the store transaction in progress, if any, and takes the
  // store-writer lock for good, so that none starts after it returns. The
  // process must exit next (any later change to a job blocks); the store
  // then reads as after a crash: running jobs resume from their journals
  // at the next start.
  void FreezeStore() ABSL_NO_THREAD_SAFETY_ANALYSIS;

 private:
  struct Entry {
    Job job;
    // The newest events (a suffix of the history, at most cached_events;
    // the last few once the job is finished); the rest are in the store.
    std::deque<JobEvent> events;
    // Published in memory but not yet in the store (its commits failed),
    // oldest first; `unsaved` says the job row is newer than the store's.
    std::vector<JobEvent> unsaved_events;
    bool unsaved = false;
    std::unique_ptr<std::atomic<bool>> stop =
        std::make_unique<std::atomic<bool>>(false);
    bool running = false;      // taken off the queue by a worker
    bool interrupted = false;  // stopped by the drain, not by a user
  };
  JobManager(const JobManagerOptions& options,
             std::unique_ptr<JobRunner> runner, std::unique_ptr<JobStore> store,
             std::unique_ptr<DevicePool> pool, metrics::Registry* registry);
  // The metrics label of pool device `name` ("cpu" for names not in it).
  std::string DeviceLabel(const std::string& name) const;
  absl::Status Load();
  void WorkerLoop();
  // The retention sweeper thread: DeleteExpiredJobs every
  // retention_sweep_interval until the drain.
  void SweepLoop();
  // Deletes finished job `id` (DeleteJob without the visibility check);
  // `reason` labels the metric.
  absl::Status Delete(const std::string& id, const char* reason);
  void RunJob(const std::string& id);
  std::string JournalDir(const std::string& id) const;
  // Removes a job's journal (logs a failure).
  void RemoveJournal(const std::string& id) const;
  // Applies `update` to a copy of the job; the event it returns (if any)
  // gets the next sequence number. Commits both to the store, then
  // publishes them in memory and notifies listeners. Writers are
  // serialised, so sequence numbers and store order agree, and nothing is
  // visible before it is durable.
  // With `keep_on_failure`, a failed commit still publishes the change in
  // memory (watchers see it; the store catches up when a later commit of
  // the job, or FlushUnsaved, succeeds) and the failure is returned.
  using Update = std::function<std::optional<JobEvent>(Job&)>;
  absl::Status Record(const std::string& id, const Update& update,
                      bool keep_on_failure = false);
  // Retries the commits of jobs published in memory only; true if none is
  // left.
  bool FlushUnsaved();
  // Drops cached events beyond the cache bound (never unsaved ones).
  void TrimCache(Entry& e) const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  bool WorkReady() const ABSL_SHARED_LOCKS_REQUIRED(mu_);
  bool WorkersStopped() const ABSL_SHARED_LOCKS_REQUIRED(mu_);
  void Notify(const std::string& job_id);
  void NotifyAll();
  // The entry of job `name` if `caller` may see it; NOT_FOUND otherwise.
  absl::StatusOr<const Entry*> Find(absl::string_view name,
                                    const Caller& caller) const
      ABSL_SHARED_LOCKS_REQUIRED(mu_);
  // by_request_id_'s key: request_ids are unique per creator.
  static std::string RequestKey(const std::string& creator,
                                const std::string& request_id);
  void Collect() const;

  const JobManagerOptions options_;
  const std::unique_ptr<JobRunner> runner_;
  const std::unique_ptr<JobStore> store_;
  const std::unique_ptr<DevicePool> pool_;  // thread-safe itself
  metrics::Registry* const registry_;       // may be null
  std::unique_ptr<JobMetrics> metrics_;     // null without a registry
  int64_t collector_id_ = 0;

  // Lock order: write_mu_, then listeners_mu_, then mu_. Record() releases
  // mu_ before it notifies (under write_mu_), and a listener may take mu_
  // through the read-only methods named at AddListener.
  //
  // Serialises Record() (store write + publish) so that events are durable
  // before they are visible and stored in sequence order; CreateJob holds it
  // too, so that creates and their output-overlap checks do not interleave.
  // Held while listeners run (Notify from Record).
  absl::Mutex write_mu_ ABSL_ACQUIRED_BEFORE(listeners_mu_, mu_);

  // Guards the job table, the queue and draining_.
  mutable absl::Mutex mu_ ABSL_ACQUIRED_AFTER(write_mu_);
  std::map<std::string, Entry> jobs_ ABSL_GUARDED_BY(mu_);  // by id
  std::map<int64_t, std::string> by_order_ ABSL_GUARDED_BY(mu_);
  // RequestKey(creator, request_id) -> id.
  std::map<std::string, std::string> by_request_id_ ABSL_GUARDED_BY(mu_);
  // (-priority, create_order, id) of QUEUED jobs: begin() runs next.
  std::set<std::tuple<int, int64_t, std::string>> queue_ ABSL_GUARDED_BY(mu_);
  int64_t next_order_ ABSL_GUARDED_BY(mu_) = 1;
  std::set<std::string> unsaved_ ABSL_GUARDED_BY(mu_);  // ids
  bool draining_ ABSL_GUARDED_BY(mu_) = false;
  int active_workers_ ABSL_GUARDED_BY(mu_) = 0;

  // Guards the listener table; held while a listener runs.
  absl::Mutex listeners_mu_ ABSL_ACQUIRED_AFTER(write_mu_)
      ABSL_ACQUIRED_BEFORE(mu_);
  struct Listener {
    std::string job_id;
    std::function<void()> fn;
  };
  std::map<int64_t, Listener> listeners_ ABSL_GUARDED_BY(listeners_mu_);
  int64_t next_listener_ ABSL_GUARDED_BY(listeners_mu_) = 1;

  std::vector<std::thread> workers_;
  std::thread sweeper_;  // only with a positive job_retention
};

}  // namespace tailor::jobs

#endif  // TAILOR_JOBS_JOB_MANAGER_H_
