#include "jobs/job_manager.h"

#include <sys/stat.h>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "jobs/job_filter.h"
#include "jobs/proc_stats.h"
#include "jobs/run_outcome.h"
#include "jobs/runner_devices.h"
#include "storage/object_store.h"
#include "util/field_error.h"
#include "util/file_util.h"
#include "util/log.h"
#include "util/quote.h"
#include "util/status_macros.h"

namespace tailor::jobs {
namespace {

constexpr int kDefaultPageSize = 50;
constexpr int kMaxPageSize = 1000;

}  // namespace

std::string JobManager::RequestKey(const std::string& creator,
                                   const std::string& request_id) {
  // A request_id is printable ASCII without spaces, so the key is unique.
  return absl::StrCat(creator, " ", request_id);
}

JobManager::JobManager(const JobManagerOptions& options,
                       std::unique_ptr<JobRunner> runner,
                       std::unique_ptr<JobStore> store,
                       std::unique_ptr<DevicePool> pool,
                       metrics::Registry* registry)
    : options_(options),
      runner_(std::move(runner)),
      store_(std::move(store)),
      pool_(std::move(pool)),
      registry_(registry) {
  if (registry != nullptr) {
    metrics_ = std::make_unique<JobMetrics>(registry);
    collector_id_ = registry->AddCollector([this] { Collect(); });
  }
}

absl::StatusOr<std::unique_ptr<JobManager>> JobManager::Create(
    const JobManagerOptions& options, std::unique_ptr<JobRunner> runner,
    metrics::Registry* registry) {
  if (options.max_concurrent_jobs < 1) {
    return FieldError("max_concurrent_jobs", "must be >= 1");
  }
  if (options.max_queued_jobs < 1) {
    return FieldError("max_queued_jobs", "must be >= 1");
  }
  if (options.max_interrupted_runs < 1) {
    return FieldError("max_interrupted_runs", "must be >= 1");
  }
  if (options.data_dir.empty()) return FieldError("data_dir", "is required");
  if (::mkdir(options.data_dir.c_str(), 0750) != 0 && errno != EEXIST) {
    return ErrnoError(errno, absl::StrCat("data_dir ", options.data_dir));
  }
  if (!IsDirectory(options.data_dir)) {
    return FieldError("data_dir",
                      absl::StrCat(options.data_dir, " is not a directory"));
  }
  TAILOR_ASSIGN_OR_RETURN(std::unique_ptr<DevicePool> pool,
                          NewDevicePool(*runner, options.device_budgets));
  TAILOR_ASSIGN_OR_RETURN(
      std::unique_ptr<JobStore> store,
      JobStore::Open(JoinPath(options.data_dir, "jobs.db"),
                     JoinPath(options.data_dir, kStoreMarkerName)));
  if (options.store_fault_for_testing) {
    store->SetFaultForTesting(options.store_fault_for_testing);
  }
  std::unique_ptr<JobManager> m(new JobManager(
      options, std::move(runner), std::move(store), std::move(pool), registry));
  TAILOR_RETURN_IF_ERROR(m->Load());
  {
    absl::MutexLock lock(&m->mu_);
    m->active_workers_ = options.max_concurrent_jobs;
  }
  // Retention at startup: a server that was down for long does not keep
  // expired jobs until its first interval.
  m->DeleteExpiredJobs(absl::Now());
  for (int i = 0; i < options.max_concurrent_jobs; ++i) {
    m->workers_.emplace_back([p = m.get()] { p->WorkerLoop(); });
  }
  if (options.job_retention > absl::ZeroDuration()) {
    m->sweeper_ = std::thread([p = m.get()] { p->SweepLoop(); });
  }
  return m;
}

JobManager::~JobManager() {
  BeginDrain();
  for (std::thread& t : workers_) t.join();
  if (sweeper_.joinable()) sweeper_.join();
  if (!FlushUnsaved()) {
    Log(LogLevel::kError, "",
        "the store refused some job changes; they are lost with this "
        "process (the jobs run again after the restart)");
  }
  if (registry_ != nullptr) registry_->RemoveCollector(collector_id_);
}

absl::StatusOr<Job> JobManager::CreateJob(const CreateJobRequest& request,
                                          const Caller& caller) {
  auto refuse = [&](absl::Status s) {
    if (metrics_) {
      metrics_->validation_failures->Increment(
          {absl::AsciiStrToLower(absl::StatusCodeToString(s.code()))});
    }
    return s;
  };
  if (draining()) {
    return absl::UnavailableError(
        "the server is draining and accepts no new jobs; retry on another "
        "replica or after the restart");
  }
  absl::Status s = CheckCreateJobRequest(request);
  if (!s.ok()) return refuse(s);
  const size_t spec_bytes = request.spec.dump().size();
  if (spec_bytes > options_.max_spec_bytes) {
    return refuse(absl::ResourceExhaustedError(
        absl::StrCat("spec: ", spec_bytes,
                     " bytes (as JSON) exceeds the "
                     "limit of ",
                     options_.max_spec_bytes)));
  }
  absl::StatusOr<nlohmann::json> spec =
      caller.allowed_roots.empty()
          ? runner_->Prepare(request.spec)
          : runner_->PrepareWithin(request.spec, caller.allowed_roots);
  if (!spec.ok()) {
    s = spec.status();
    if (s.code() == absl::StatusCode::kInvalidArgument &&
        !absl::StartsWith(s.message(), "spec")) {
      s = absl::InvalidArgumentError(absl::StrCat("spec.", s.message()));
    }
    return refuse(s);
  }
  if (absl::StatusOr<std::vector<int>> permitted =
          pool_->Permitted(spec->value("device", "auto"));
      !permitted.ok()) {
    return refuse(absl::Status(
        permitted.status().code(),
        absl::StrCat("spec.device: ", permitted.status().message())));
  }
  // Issue #17 point 1: an existing output (without overwrite) or one that
  // cannot be created is refused now, not when the job runs -- except for a
  // retry of a request_id already taken (its outputs may be the first
  // job's; the dedupe below answers it).
  bool retry = false;
  if (!request.request_id.empty()) {
    absl::ReaderMutexLock lock(&mu_);
    retry = by_request_id_.count(
                RequestKey(caller.principal, request.request_id)) > 0;
  }
  if (absl::Status outputs =
          retry ? absl::OkStatus()
                : CheckOutputsCreatable(runner_->OutputPaths(*spec),
                                        spec->value("overwrite", false));
      !outputs.ok()) {
    return refuse(
        absl::Status(outputs.code(), absl::StrCat("spec.", outputs.message())));
  }
  const std::string fingerprint = nlohmann::json{
      {"spec", *spec},
      {"priority", request.priority},
      {"labels", request.labels}}.dump();

  absl::MutexLock write_lock(&write_mu_);
  // Issue #10: two active jobs never write the same output (the later one
  // would replace the earlier one's result). A retry of the same request_id
  // is left to the dedupe below. write_mu_ keeps creates from interleaving;
  // the paths are resolved without mu_ held.
  {
    std::vector<std::pair<std::string, nlohmann::json>> active;
    {
      absl::ReaderMutexLock lock(&mu_);
      for (const auto& [id, e] : jobs_) {
        if (IsTerminal(e.job.state)) continue;
        if (!request.request_id.empty() &&
            e.job.request_id == request.request_id &&
            e.job.creator == caller.principal) {
          continue;
        }
        active.emplace_back(e.job.name(), e.job.spec);
      }
    }
    const OutputPaths mine = runner_->OutputPaths(*spec);
    for (const auto& [other, other_spec] : active) {
      if (mine.empty()) break;
      const absl::Status overlap =
          CheckOutputsDisjoint(mine, runner_->OutputPaths(other_spec), other);
      if (!overlap.ok()) return refuse(overlap);
    }
  }
  Job job;
  {
    absl::MutexLock lock(&mu_);
    if (draining_) {
      return absl::UnavailableError(
          "the server is draining and accepts no new jobs");
    }
    if (!request.request_id.empty()) {
      auto it =
          by_request_id_.find(RequestKey(caller.principal, request.request_id));
      if (it != by_request_id_.end()) {
        const Job& existing = jobs_[it->second].job;
        if (existing.fingerprint == fingerprint) return existing;
        return refuse(absl::AlreadyExistsError(
            absl::StrCat("request_id: '", request.request_id, "' was used for ",
                         existing.name(),
                         " with a different request; use a new request_id")));
      }
    }
    if (queue_.size() >= static_cast<size_t>(options_.max_queued_jobs)) {
      return refuse(absl::ResourceExhaustedError(
          absl::StrCat("the queue is full (", options_.max_queued_jobs,
                       " jobs queued); retry later")));
    }
    if (options_.max_queued_jobs_per_principal > 0) {
      int mine = 0;
      for (const auto& queued : queue_) {
        if (jobs_.at(std::get<2>(queued)).job.creator == caller.principal) {
          ++mine;
        }
      }
      if (mine >= options_.max_queued_jobs_per_principal) {
        return refuse(absl::ResourceExhaustedError(absl::StrCat(
            "principal '", caller.principal, "' has ", mine,
            " jobs queued, its quota (tailord "
            "--max-queued-jobs-per-principal); retry when one has started")));
      }
    }
    do {
      job.id = NewJobId();
    } while (jobs_.count(job.id) > 0);
    job.create_order = next_order_++;
  }
  job.request_id = request.request_id;
  job.creator = caller.principal;
  job.spec = *spec;
  job.priority = request.priority;
  job.labels = request.labels;
  job.fingerprint = fingerprint;
  job.state = JobState::kQueued;
  job.create_time = absl::Now();
  JobEvent event = StateEvent(JobState::kQueued);
  event.sequence = job.last_sequence = 1;
  event.time = job.create_time;
  TAILOR_RETURN_IF_ERROR(store_->Commit(job, {event}, /*mark=*/true));
  {
    absl::MutexLock lock(&mu_);
    Entry& e = jobs_[job.id];
    e.job = job;
    e.events.push_back(event);
    by_order_[job.create_order] = job.id;
    if (!job.request_id.empty()) {
      by_request_id_[RequestKey(job.creator, job.request_id)] = job.id;
    }
    queue_.emplace(-job.priority, job.create_order, job.id);
  }
  if (metrics_) metrics_->submitted->Increment({});
  Log(LogLevel::kInfo, job.name(),
      absl::StrCat("queued (priority ", job.priority, ")"));
  return job;
}

absl::StatusOr<const JobManager::Entry*> JobManager::Find(
    absl::string_view name, const Caller& caller) const {
  TAILOR_ASSIGN_OR_RETURN(std::string id, JobIdFromName(name));
  auto it = jobs_.find(id);
  // Another principal's job answers exactly as a missing one.
  if (it == jobs_.end() || !caller.MaySee(it->second.job.creator)) {
    return absl::NotFoundError(absl::StrCat("no job named ", name));
  }
  return &it->second;
}

absl::StatusOr<Job> JobManager::GetJob(absl::string_view name,
                                       const Caller& caller) const {
  absl::ReaderMutexLock lock(&mu_);
  TAILOR_ASSIGN_OR_RETURN(const Entry* e, Find(name, caller));
  return e->job;
}

absl::StatusOr<ListJobsResult> JobManager::ListJobs(
    int page_size, const std::string& page_token, const std::string& filter,
    const Caller& caller) const {
  if (page_size < 0) return FieldError("page_size", "must be >= 0");
  if (page_size == 0) page_size = kDefaultPageSize;
  page_size = std::min(page_size, kMaxPageSize);
  TAILOR_ASSIGN_OR_RETURN(JobFilter f, ParseJobFilter(filter));
  int64_t before = std::numeric_limits<int64_t>::max();
  if (!page_token.empty()) {
    TAILOR_ASSIGN_OR_RETURN(before, ParsePageToken(f, page_token));
  }
  ListJobsResult result;
  absl::ReaderMutexLock lock(&mu_);
  for (auto it = std::make_reverse_iterator(by_order_.lower_bound(before));
       it != by_order_.rend(); ++it) {
    const Job& job = jobs_.at(it->second).job;
    if (!caller.MaySee(job.creator) || !f.Matches(job)) continue;
    if (static_cast<int>(result.jobs.size()) == page_size) {
      result.next_page_token = PageToken(f, result.jobs.back().create_order);
      break;
    }
    result.jobs.push_back(job);
  }
  return result;
}

absl::StatusOr<Job> JobManager::CancelJob(absl::string_view name,
                                          const Caller& caller) {
  std::string id;
  bool was_queued = false;
  {
    absl::MutexLock lock(&mu_);
    TAILOR_ASSIGN_OR_RETURN(const Entry* found, Find(name, caller));
    id = found->job.id;
    Entry& e = jobs_[id];
    if (IsTerminal(e.job.state)) {
      return absl::FailedPreconditionError(
          absl::StrCat(name, " already finished (", JobStateName(e.job.state),
                       "); only QUEUED or RUNNING jobs can be cancelled"));
    }
    // A job still in the queue is ours to cancel; one a worker took is
    // stopped through its flag (the runner checks it before each tensor).
    was_queued = queue_.erase({-e.job.priority, e.job.create_order, id}) > 0;
  }
  const absl::Status cancelled =
      absl::CancelledError("cancelled before it started");
  // Durable before it is acknowledged (and before the run is told): a
  // restart before the run ends finds the request and cancels the job.
  absl::Status s = Record(id, [&](Job& job) -> std::optional<JobEvent> {
    job.cancel_requested = true;
    if (!was_queued) return std::nullopt;
    job.state = JobState::kCancelled;
    job.end_time = absl::Now();
    job.error_code = static_cast<int>(cancelled.code());
    job.error_message = std::string(cancelled.message());
    return StateEvent(JobState::kCancelled, cancelled);
  });
  if (!s.ok()) {
    absl::MutexLock lock(&mu_);
    const Job& job = jobs_.at(id).job;
    if (was_queued && job.state == JobState::kQueued) {
      queue_.emplace(-job.priority, job.create_order, id);
    }
    return s;
  }
  // From here on the job may be finished, so a DeleteJob may remove it at
  // any moment: look it up, never assume it.
  Job job;
  {
    absl::MutexLock lock(&mu_);
    auto it = jobs_.find(id);
    if (it == jobs_.end()) {
      return absl::NotFoundError(absl::StrCat("no job named ", name));
    }
    if (!was_queued) it->second.stop->store(true);
    job = it->second.job;
  }
  if (was_queued) {
    RemoveJournal(id);  // a drained job's, if any
    if (metrics_) metrics_->finished->Increment({"cancelled"});
  }
  Log(LogLevel::kInfo, job.name(),
      was_queued ? "cancelled while queued" : "cancel requested");
  return job;
}

absl::StatusOr<JobManager::Result> JobManager::GetResult(
    absl::string_view name, ResultKind kind, const Caller& caller) const {
  Job job;
  {
    absl::ReaderMutexLock lock(&mu_);
    TAILOR_ASSIGN_OR_RETURN(const Entry* e, Find(name, caller));
    job = e->job;
  }
  if (job.state != JobState::kSucceeded) {
    return absl::FailedPreconditionError(
        absl::StrCat(name, " is ", JobStateName(job.state),
                     "; results exist only for SUCCEEDED jobs"));
  }
  Result r;
  if (kind == ResultKind::kReport) {
    r.is_inline = true;
    r.data = job.report_text;
    return r;
  }
  const std::string uri = job.spec.value("patch_out", "");
  if (uri.empty()) {
    return absl::FailedPreconditionError(
        absl::StrCat(name, " wrote no patch (its spec has no patch_out)"));
  }
  if (IsRemoteUri(uri)) {
    // ReadJobResult streams local files; a remote patch is read where it
    // was published (it is committed only when the job succeeded).
    return absl::FailedPreconditionError(absl::StrCat(
        name, " wrote its patch to ", Quote(uri),
        ": read it from there (ReadJobResult serves local patches only)"));
  }
  TAILOR_ASSIGN_OR_RETURN(r.path, runner_->ResolveOutput(uri));
  // Served only if the file still holds the bytes published (issue #10
  // point 4); a job from before digests were recorded cannot be checked.
  if (!job.result.is_object() || !job.result.contains("patch_sha256") ||
      !job.result["patch_sha256"].is_string()) {
    return absl::FailedPreconditionError(absl::StrCat(
        name,
        " has no recorded patch digest (it succeeded before tailord "
        "pinned results); run the job again to fetch its patch"));
  }
  r.sha256 = job.result["patch_sha256"].get<std::string>();
  r.size = job.result.value("patch_bytes", uint64_t{0});
  return r;
}

void JobManager::BeginDrain() {
  {
    absl::MutexLock lock(&mu_);
    if (draining_) return;
    draining_ = true;
    for (auto& [id, e] : jobs_) {
      if (e.running) {
        e.interrupted = true;
        e.stop->store(true);
      }
    }
  }
  Log(LogLevel::kInfo, "", "draining: no new jobs; running jobs stop");
  NotifyAll();
}

bool JobManager::draining() const {
  absl::ReaderMutexLock lock(&mu_);
  return draining_;
}

bool JobManager::WaitForWorkers(absl::Time deadline) {
  absl::MutexLock lock(&mu_);
  return mu_.AwaitWithDeadline(
      absl::Condition(this, &JobManager::WorkersStopped), deadline);
}

bool JobManager::WorkReady() const { return draining_ || !queue_.empty(); }

bool JobManager::WorkersStopped() const { return active_workers_ == 0; }

void JobManager::Collect() const {
  std::map<JobState, int> counts;
  for (JobState s :
       {JobState::kQueued, JobState::kRunning, JobState::kSucceeded,
        JobState::kFailed, JobState::kCancelled}) {
    counts[s] = 0;
  }
  {
    absl::ReaderMutexLock lock(&mu_);
    for (const auto& [id, e] : jobs_) ++counts[e.job.state];
  }
  for (const auto& [s, n] : counts) {
    metrics_->jobs->Set({OutcomeLabel(s)}, n);
  }
  for (const char* reason : {"request", "retention"}) {
    metrics_->deleted->Increment({reason}, 0);  // exported from zero
  }
  for (int i = 0; i < static_cast<int>(pool_->devices().size()); ++i) {
    const PoolDevice& d = pool_->devices()[i];
    metrics_->device_memory->Set({d.label},
                                 static_cast<double>(pool_->Reserved(i)));
    metrics_->device_budget->Set({d.label}, static_cast<double>(d.budget));
    metrics_->device_busy->Increment({d.label}, 0);  // exported from zero
  }
  metrics_->process_memory->Set({}, ResidentBytes());
}

std::string JobManager::DeviceLabel(const std::string& name) const {
  for (const PoolDevice& d : pool_->devices()) {
    if (d.name == name) return d.label;
  }
  return "cpu";
}

}  // namespace tailor::jobs
