#include "jobs/job_manager.h"

#include <sys/stat.h>
#include <sys/statvfs.h>

#include <cstdio>
#include <fstream>
#include <set>

#include "absl/random/random.h"
#include "absl/strings/ascii.h"
#include "absl/strings/escaping.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "absl/time/clock.h"
#include "util/file_util.h"
#include "util/log.h"
#include "util/status_macros.h"

namespace tailor::jobs {
namespace {

constexpr int kMaxPriority = 9;
constexpr size_t kMaxRequestId = 36;
constexpr size_t kMaxLabels = 16;
constexpr size_t kMaxLabelLength = 63;
constexpr int kDefaultPageSize = 50;
constexpr int kMaxPageSize = 1000;

absl::Status Invalid(absl::string_view field, absl::string_view rule) {
  return absl::InvalidArgumentError(absl::StrCat(field, ": ", rule));
}

absl::Status CheckLabelText(absl::string_view field, absl::string_view text) {
  if (text.empty() || text.size() > kMaxLabelLength) {
    return Invalid(field, "must be 1 to 63 characters");
  }
  for (char c : text) {
    if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_' ||
          c == '-')) {
      return Invalid(field, absl::StrCat("'", text,
                                         "' may contain only a-z, 0-9, "
                                         "'_' and '-'"));
    }
  }
  return absl::OkStatus();
}

absl::Status CheckRequest(const CreateJobRequest& r) {
  if (r.priority < 0 || r.priority > kMaxPriority) {
    return Invalid("priority", absl::StrCat("must be in 0..", kMaxPriority,
                                            ", not ", r.priority));
  }
  if (r.request_id.size() > kMaxRequestId) {
    return Invalid("request_id", "must be at most 36 characters");
  }
  for (char c : r.request_id) {
    if (c < 0x21 || c > 0x7e) {
      return Invalid("request_id", "must be printable ASCII without spaces");
    }
  }
  if (r.labels.size() > kMaxLabels) {
    return Invalid("labels", "at most 16 labels");
  }
  for (const auto& [k, v] : r.labels) {
    TAILOR_RETURN_IF_ERROR(CheckLabelText("labels key", k));
    TAILOR_RETURN_IF_ERROR(CheckLabelText(absl::StrCat("labels[", k, "]"), v));
  }
  return absl::OkStatus();
}

std::string NewJobId() {
  static absl::Mutex mu;
  static absl::BitGen* gen = new absl::BitGen();
  absl::MutexLock lock(&mu);
  return absl::StrFormat("%016x", absl::Uniform<uint64_t>(*gen));
}

JobEvent StateEvent(JobState state, const absl::Status& status = {},
                    nlohmann::json result = nullptr) {
  JobEvent e;
  e.kind = JobEvent::Kind::kStateChange;
  e.state = state;
  e.error_code = static_cast<int>(status.code());
  e.error_message = std::string(status.message());
  e.result = std::move(result);
  return e;
}

std::string OutcomeLabel(JobState s) {
  return absl::AsciiStrToLower(JobStateName(s));
}

// The result summary of a report: method, totals, outputs.
nlohmann::json Summary(const nlohmann::json& report,
                       const nlohmann::json& spec) {
  nlohmann::json s = report.value("totals", nlohmann::json::object());
  s["method"] = report.value("method", "");
  s["fused"] = spec.value("out", "");
  s["patch"] = spec.value("patch_out", "");
  s["report"] = spec.value("report", "");
  // The patch as published, pinned (issue #10 point 4): GetResult serves
  // exactly these bytes or an error.
  const nlohmann::json outputs =
      report.value("outputs", nlohmann::json::object());
  if (outputs.contains("patch_sha256")) {
    s["patch_sha256"] = outputs["patch_sha256"];
    s["patch_bytes"] = outputs.value("patch_bytes", uint64_t{0});
  }
  return s;
}

uint64_t PathBytes(const std::string& path) {
  struct stat st;
  if (::stat(path.c_str(), &st) != 0) return 0;
  if (S_ISREG(st.st_mode)) return static_cast<uint64_t>(st.st_size);
  if (!S_ISDIR(st.st_mode)) return 0;
  uint64_t total = 0;
  absl::StatusOr<std::vector<std::string>> names = ListDirectory(path);
  if (!names.ok()) return 0;
  for (const std::string& n : *names) total += PathBytes(JoinPath(path, n));
  return total;
}

// Component-wise: canonical paths `a` and `b` are equal or one contains
// the other.
bool PathsOverlap(absl::string_view a, absl::string_view b) {
  if (a.size() > b.size()) std::swap(a, b);
  if (!absl::StartsWith(b, a)) return false;
  return b.size() == a.size() || a == "/" || b[a.size()] == '/';
}

// Resident set size of this process (Linux), bytes; 0 if unknown.
double ResidentBytes() {
  std::ifstream statm("/proc/self/statm");
  long pages = 0, resident = 0;
  if (!(statm >> pages >> resident)) return 0;
  return static_cast<double>(resident) * ::sysconf(_SC_PAGESIZE);
}

// A parsed filter: every term must hold. Terms on the same key AND too, so
// two different values of one key match nothing.
struct Filter {
  std::set<JobState> states;
  std::map<std::string, std::set<std::string>> labels;
  // The terms, sorted: equal for filters that mean the same.
  std::string canonical;
};

absl::StatusOr<Filter> ParseFilter(const std::string& text) {
  Filter f;
  if (absl::StripAsciiWhitespace(text).empty()) return f;
  std::set<std::string> terms;
  for (absl::string_view term : absl::StrSplit(text, " AND ")) {
    term = absl::StripAsciiWhitespace(term);
    std::pair<std::string, std::string> kv =
        absl::StrSplit(term, absl::MaxSplits('=', 1));
    std::string key(absl::StripAsciiWhitespace(kv.first));
    std::string value(absl::StripAsciiWhitespace(kv.second));
    if (key == "state") {
      std::optional<JobState> state = ParseJobState(value);
      if (!state || *state == JobState::kUnspecified) {
        return Invalid(
            "filter",
            absl::StrCat("unknown state '", value.substr(0, 64),
                         "' (QUEUED, RUNNING, SUCCEEDED, FAILED, CANCELLED)"));
      }
      f.states.insert(*state);
    } else if (absl::StartsWith(key, "labels.") && key.size() > 7 &&
               term.find('=') != absl::string_view::npos) {
      f.labels[key.substr(7)].insert(value);
    } else {
      return Invalid("filter",
                     absl::StrCat("term '", term.substr(0, 128),
                                  "' is not state=STATE or labels.KEY=VALUE "
                                  "(terms are joined by ' AND ')"));
    }
    terms.insert(absl::StrCat(key, "=", value));
  }
  f.canonical = absl::StrJoin(terms, " AND ");
  return f;
}

bool Matches(const Filter& f, const Job& job) {
  for (JobState s : f.states) {
    if (job.state != s) return false;
  }
  for (const auto& [k, values] : f.labels) {
    auto it = job.labels.find(k);
    for (const std::string& v : values) {
      if (it == job.labels.end() || it->second != v) return false;
    }
  }
  return true;
}

// FNV-1a, 64 bits: stable across builds and processes (unlike std::hash).
uint64_t Fnv1a(absl::string_view text) {
  uint64_t h = 14695981039346656037ull;
  for (unsigned char c : text) {
    h ^= c;
    h *= 1099511628211ull;
  }
  return h;
}

// A page token: the filter's hash and the create_order to continue below,
// web-safe base64 of "t1:<hash>:<order>".
std::string PageToken(const Filter& f, int64_t before) {
  return absl::WebSafeBase64Escape(
      absl::StrFormat("t1:%016x:%d", Fnv1a(f.canonical), before));
}

absl::StatusOr<int64_t> ParsePageToken(const Filter& f,
                                       const std::string& token) {
  const absl::Status bad =
      Invalid("page_token", "is not a token this server returned");
  std::string text;
  if (token.size() > 256 || !absl::WebSafeBase64Unescape(token, &text)) {
    return bad;
  }
  std::vector<std::string> parts = absl::StrSplit(text, ':');
  int64_t before = 0;
  if (parts.size() != 3 || parts[0] != "t1" ||
      !absl::SimpleAtoi(parts[2], &before) || before <= 0) {
    return bad;
  }
  if (parts[1] != absl::StrFormat("%016x", Fnv1a(f.canonical))) {
    return Invalid("page_token",
                   "was issued for another filter; a page token must come "
                   "with the filter of the request that returned it");
  }
  return before;
}

// Free bytes of the file system holding `path`; nullopt if unknown.
std::optional<uint64_t> FreeBytes(const std::string& path) {
  struct statvfs st;
  if (::statvfs(path.c_str(), &st) != 0) return std::nullopt;
  return static_cast<uint64_t>(st.f_bavail) * st.f_frsize;
}

// Events a finished job keeps in memory (its watchers' usual tail).
constexpr size_t kFinishedCachedEvents = 16;

// The runner's devices with their budgets: options.device_budgets by
// name, then by kind ("cuda"), then the defaults.
absl::StatusOr<std::unique_ptr<DevicePool>> NewDevicePool(
    const JobRunner& runner,
    const std::map<std::string, DeviceBudget>& budgets) {
  std::vector<PoolDevice> devices;
  std::set<std::string> used;
  for (const RunnerDevice& d : runner.Devices()) {
    const bool cuda = absl::StartsWith(d.name, "cuda");
    DeviceBudget b;
    b.fraction = cuda ? kDefaultCudaBudget : kDefaultCpuBudget;
    for (const std::string& key :
         {std::string(cuda ? "cuda" : "cpu"), d.name}) {
      auto it = budgets.find(key);
      if (it == budgets.end()) continue;
      b = it->second;
      used.insert(key);
    }
    const int64_t budget = b.For(d.memory_bytes);
    if (budget <= 0) {
      return Invalid(
          "device-memory-budget",
          absl::StrCat("device ", d.name,
                       b.fraction > 0 && d.memory_bytes <= 0
                           ? " has an unknown memory size; give its budget "
                             "in bytes (e.g. "
                           : " gets no memory; give a budget (e.g. ",
                       d.name, "=8Gi)"));
    }
    devices.push_back({d.name, d.name, d.label, budget});
    Log(LogLevel::kInfo, "",
        absl::StrCat("device ", d.name, " (", d.label, "): memory budget ",
                     budget, " bytes"));
  }
  for (const auto& [key, b] : budgets) {
    if (used.count(key) == 0 && key != "cuda") {
      Log(LogLevel::kWarning, "",
          absl::StrCat("device-memory-budget: no device ", key,
                       " here; ignored"));
    }
  }
  return DevicePool::Create(std::move(devices));
}

}  // namespace

// Turns engine progress into job events (on the job's threads, one event
// at a time).
class JobManager::ProgressAdapter : public ProgressSink {
 public:
  ProgressAdapter(JobManager* manager, std::string id)
      : manager_(manager), id_(std::move(id)) {}
  ~ProgressAdapter() override { OnExecutor(0, 0); }

  // The executor gauges sum every running job's items: this job's change.
  void OnExecutor(int in_flight, int queued) override {
    if (!manager_->metrics_) return;
    JobMetrics& m = *manager_->metrics_;
    m.executor_items->Increment({"in_flight"}, in_flight - in_flight_);
    m.executor_items->Increment({"queued"}, queued - queued_);
    in_flight_ = in_flight;
    queued_ = queued;
  }

  void OnEvent(const ProgressEvent& e) override {
    JobEvent event;
    if (e.kind == ProgressEvent::Kind::kFinished) return;
    if (e.kind == ProgressEvent::Kind::kWarning) {
      event.kind = JobEvent::Kind::kWarning;
      event.warning = e.message;
      Log(LogLevel::kWarning, "fusionJobs/" + id_, e.message);
    } else {
      event.kind = JobEvent::Kind::kProgress;
      JobProgress& p = event.progress;
      p.tensors_done = e.done;
      p.tensors_total = e.total;
      p.bytes_done = e.bytes_done;
      p.bytes_total = e.bytes_total;
      p.elapsed_seconds = e.elapsed_seconds;
      if (e.bytes_done > 0 && e.bytes_total >= e.bytes_done) {
        p.eta_seconds = e.elapsed_seconds *
                        static_cast<double>(e.bytes_total - e.bytes_done) /
                        static_cast<double>(e.bytes_done);
      }
      p.tensor = e.tensor;
      p.action = e.action;
      if (e.kind == ProgressEvent::Kind::kTensorDone && manager_->metrics_) {
        JobMetrics& m = *manager_->metrics_;
        const std::string device = manager_->DeviceLabel(e.device);
        m.tensors->Increment({device, e.action});
        if (e.wait_seconds > 0) {
          m.device_wait->Increment({device}, e.wait_seconds);
        }
        // The tensor's own time: waiting for a device does not count. A
        // fused tensor's is the time it held its device (tensors of one
        // job overlap with several workers); a copied or resumed one's the
        // time since the previous event.
        m.tensor_duration->Observe(
            {device}, e.busy_seconds > 0
                          ? e.busy_seconds
                          : std::max(0.0, e.elapsed_seconds - last_elapsed_ -
                                              e.wait_seconds));
        if (e.busy_seconds > 0)
          m.device_busy->Increment({device}, e.busy_seconds);
        m.read_bytes->Increment(
            {}, static_cast<double>(e.bytes_done - last_bytes_));
      }
      last_elapsed_ = e.elapsed_seconds;
      last_bytes_ = e.bytes_done;
    }
    absl::Status s = manager_->Record(id_, [&](Job& job) {
      if (event.kind == JobEvent::Kind::kProgress)
        job.progress = event.progress;
      return std::optional<JobEvent>(event);
    });
    if (!s.ok()) Log(LogLevel::kError, "fusionJobs/" + id_, s.ToString());
  }

 private:
  JobManager* const manager_;
  const std::string id_;
  double last_elapsed_ = 0;
  uint64_t last_bytes_ = 0;
  // This job's last executor gauges (OnExecutor calls are serialised by the
  // executor's lock).
  int in_flight_ = 0, queued_ = 0;
};

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
    return Invalid("max_concurrent_jobs", "must be >= 1");
  }
  if (options.max_queued_jobs < 1) {
    return Invalid("max_queued_jobs", "must be >= 1");
  }
  if (options.max_interrupted_runs < 1) {
    return Invalid("max_interrupted_runs", "must be >= 1");
  }
  if (options.data_dir.empty()) return Invalid("data_dir", "is required");
  if (::mkdir(options.data_dir.c_str(), 0750) != 0 && errno != EEXIST) {
    return ErrnoToStatus(errno, absl::StrCat("data_dir ", options.data_dir));
  }
  if (!IsDirectory(options.data_dir)) {
    return Invalid("data_dir",
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
  for (int i = 0; i < options.max_concurrent_jobs; ++i) {
    m->workers_.emplace_back([p = m.get()] { p->WorkerLoop(); });
  }
  return m;
}

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
      if (!job.request_id.empty()) by_request_id_[job.request_id] = job.id;
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

JobManager::~JobManager() {
  BeginDrain();
  for (std::thread& t : workers_) t.join();
  if (!FlushUnsaved()) {
    Log(LogLevel::kError, "",
        "the store refused some job changes; they are lost with this "
        "process (the jobs run again after the restart)");
  }
  if (registry_ != nullptr) registry_->RemoveCollector(collector_id_);
}

absl::Status JobManager::Record(const std::string& id, const Update& update,
                                bool keep_on_failure) {
  absl::MutexLock write_lock(&write_mu_);
  Job updated;
  std::vector<JobEvent> events;  // unsaved ones first, then the new one
  bool cancel_before;
  {
    absl::MutexLock lock(&mu_);
    auto it = jobs_.find(id);
    if (it == jobs_.end()) return absl::NotFoundError("fusionJobs/" + id);
    updated = it->second.job;
    events = it->second.unsaved_events;
    cancel_before = updated.cancel_requested;
  }
  std::optional<JobEvent> event = update(updated);
  if (event) {
    event->sequence = ++updated.last_sequence;
    event->time = absl::Now();
    events.push_back(*event);
  }
  // The marker follows what a client was told: creations, state changes
  // and cancel requests (not every progress event).
  bool mark = updated.cancel_requested != cancel_before;
  for (const JobEvent& ev : events) {
    mark = mark || ev.kind == JobEvent::Kind::kStateChange;
  }
  const absl::Status s = store_->Commit(updated, events, mark);
  if (!s.ok() && !keep_on_failure) return s;
  {
    absl::MutexLock lock(&mu_);
    Entry& e = jobs_[id];
    e.job = std::move(updated);
    if (event) e.events.push_back(*event);
    if (s.ok()) {
      e.unsaved_events.clear();
      e.unsaved = false;
      unsaved_.erase(id);
    } else {
      if (event) e.unsaved_events.push_back(*event);
      e.unsaved = true;
      unsaved_.insert(id);
    }
    TrimCache(e);
  }
  if (event) Notify(id);
  return s;
}

bool JobManager::FlushUnsaved() {
  std::set<std::string> ids;
  {
    absl::ReaderMutexLock lock(&mu_);
    ids = unsaved_;
  }
  for (const std::string& id : ids) {
    const absl::Status s =
        Record(id, [](Job&) { return std::optional<JobEvent>(); });
    if (s.ok()) {
      Log(LogLevel::kInfo, "fusionJobs/" + id,
          "the store took the changes it had refused");
    }
  }
  absl::ReaderMutexLock lock(&mu_);
  return unsaved_.empty();
}

void JobManager::TrimCache(Entry& e) const {
  const size_t limit = IsTerminal(e.job.state)
                           ? kFinishedCachedEvents
                           : std::max<size_t>(options_.cached_events, 1);
  const int64_t first_unsaved = e.unsaved_events.empty()
                                    ? std::numeric_limits<int64_t>::max()
                                    : e.unsaved_events.front().sequence;
  while (e.events.size() > limit && e.events.front().sequence < first_unsaved) {
    e.events.pop_front();
  }
}

void JobManager::Notify(const std::string& job_id) {
  absl::MutexLock lock(&listeners_mu_);
  for (auto& [id, l] : listeners_) {
    if (l.job_id == job_id) l.fn();
  }
}

void JobManager::NotifyAll() {
  absl::MutexLock lock(&listeners_mu_);
  for (auto& [id, l] : listeners_) l.fn();
}

int64_t JobManager::AddListener(const std::string& job_id,
                                std::function<void()> listener) {
  absl::MutexLock lock(&listeners_mu_);
  const int64_t id = next_listener_++;
  listeners_[id] = Listener{job_id, std::move(listener)};
  return id;
}

void JobManager::RemoveListener(int64_t id) {
  absl::MutexLock lock(&listeners_mu_);
  listeners_.erase(id);
}

absl::StatusOr<Job> JobManager::CreateJob(const CreateJobRequest& request) {
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
  absl::Status s = CheckRequest(request);
  if (!s.ok()) return refuse(s);
  const size_t spec_bytes = request.spec.dump().size();
  if (spec_bytes > options_.max_spec_bytes) {
    return refuse(absl::ResourceExhaustedError(
        absl::StrCat("spec: ", spec_bytes,
                     " bytes (as JSON) exceeds the "
                     "limit of ",
                     options_.max_spec_bytes)));
  }
  absl::StatusOr<nlohmann::json> spec = runner_->Prepare(request.spec);
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
            e.job.request_id == request.request_id) {
          continue;
        }
        active.emplace_back(e.job.name(), e.job.spec);
      }
    }
    const auto mine = runner_->OutputPaths(*spec);
    for (const auto& [other, other_spec] : active) {
      if (mine.empty()) break;
      for (const auto& [other_field, theirs] :
           runner_->OutputPaths(other_spec)) {
        for (const auto& [field, path] : mine) {
          if (PathsOverlap(path, theirs)) {
            return refuse(absl::FailedPreconditionError(absl::StrCat(
                field, ": '", path, "' overlaps the output ", other_field,
                " ('", theirs, "') of ", other,
                ", which is queued or running; wait for it or choose "
                "another path")));
          }
        }
      }
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
      auto it = by_request_id_.find(request.request_id);
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
    do {
      job.id = NewJobId();
    } while (jobs_.count(job.id) > 0);
    job.create_order = next_order_++;
  }
  job.request_id = request.request_id;
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
    if (!job.request_id.empty()) by_request_id_[job.request_id] = job.id;
    queue_.emplace(-job.priority, job.create_order, job.id);
  }
  if (metrics_) metrics_->submitted->Increment({});
  Log(LogLevel::kInfo, job.name(),
      absl::StrCat("queued (priority ", job.priority, ")"));
  return job;
}

absl::StatusOr<const JobManager::Entry*> JobManager::Find(
    absl::string_view name) const {
  TAILOR_ASSIGN_OR_RETURN(std::string id, JobIdFromName(name));
  auto it = jobs_.find(id);
  if (it == jobs_.end()) {
    return absl::NotFoundError(absl::StrCat("no job named ", name));
  }
  return &it->second;
}

absl::StatusOr<Job> JobManager::GetJob(absl::string_view name) const {
  absl::ReaderMutexLock lock(&mu_);
  TAILOR_ASSIGN_OR_RETURN(const Entry* e, Find(name));
  return e->job;
}

absl::StatusOr<ListJobsResult> JobManager::ListJobs(
    int page_size, const std::string& page_token,
    const std::string& filter) const {
  if (page_size < 0) return Invalid("page_size", "must be >= 0");
  if (page_size == 0) page_size = kDefaultPageSize;
  page_size = std::min(page_size, kMaxPageSize);
  TAILOR_ASSIGN_OR_RETURN(Filter f, ParseFilter(filter));
  int64_t before = std::numeric_limits<int64_t>::max();
  if (!page_token.empty()) {
    TAILOR_ASSIGN_OR_RETURN(before, ParsePageToken(f, page_token));
  }
  ListJobsResult result;
  absl::ReaderMutexLock lock(&mu_);
  for (auto it = std::make_reverse_iterator(by_order_.lower_bound(before));
       it != by_order_.rend(); ++it) {
    const Job& job = jobs_.at(it->second).job;
    if (!Matches(f, job)) continue;
    if (static_cast<int>(result.jobs.size()) == page_size) {
      result.next_page_token = PageToken(f, result.jobs.back().create_order);
      break;
    }
    result.jobs.push_back(job);
  }
  return result;
}

absl::StatusOr<Job> JobManager::CancelJob(absl::string_view name) {
  std::string id;
  bool was_queued = false;
  {
    absl::MutexLock lock(&mu_);
    TAILOR_ASSIGN_OR_RETURN(const Entry* found, Find(name));
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
  if (was_queued) {
    RemoveJournal(id);  // a drained job's, if any
    if (metrics_) metrics_->finished->Increment({"cancelled"});
  } else {
    absl::MutexLock lock(&mu_);
    jobs_.at(id).stop->store(true);
  }
  absl::ReaderMutexLock lock(&mu_);
  const Job& job = jobs_.at(id).job;
  Log(LogLevel::kInfo, job.name(),
      was_queued ? "cancelled while queued" : "cancel requested");
  return job;
}

absl::StatusOr<JobManager::EventBatch> JobManager::ReadEvents(
    absl::string_view name, int64_t after_sequence, size_t max,
    bool may_read_store) const {
  if (after_sequence < 0) return Invalid("after_sequence", "must be >= 0");
  EventBatch batch;
  std::string id;
  int64_t want = 0;  // events to read from the store
  {
    absl::ReaderMutexLock lock(&mu_);
    TAILOR_ASSIGN_OR_RETURN(const Entry* e, Find(name));
    const int64_t last = e->job.last_sequence;
    const bool finished = IsTerminal(e->job.state);
    // Nothing after the last event (after_sequence may be anything up to
    // INT64_MAX: no arithmetic on it before this test).
    if (after_sequence >= last) {
      batch.end = finished;
      return batch;
    }
    const int64_t next = after_sequence + 1;  // <= last: no overflow
    const int64_t first_cached =
        e->events.empty() ? last + 1 : e->events.front().sequence;
    if (next >= first_cached) {
      for (size_t i = static_cast<size_t>(next - first_cached);
           i < e->events.size() && batch.events.size() < max; ++i) {
        batch.events.push_back(e->events[i]);
      }
      const int64_t reached =
          batch.events.empty() ? after_sequence : batch.events.back().sequence;
      batch.end = finished && reached >= last;
      return batch;
    }
    if (max == 0) return batch;
    if (!may_read_store) {
      batch.in_store = true;
      return batch;
    }
    id = e->job.id;
    want = std::min<int64_t>(static_cast<int64_t>(std::min<size_t>(max, 4096)),
                             first_cached - next);
  }
  // Older than the cache: from the store (outside the locks; the events
  // of a sequence never change once written).
  TAILOR_ASSIGN_OR_RETURN(batch.events,
                          store_->LoadEvents(id, after_sequence, want));
  if (batch.events.empty() ||
      batch.events.front().sequence != after_sequence + 1) {
    return absl::DataLossError(
        absl::StrCat("job store: ", name, " lacks event ", after_sequence + 1));
  }
  return batch;
}

absl::StatusOr<JobManager::Result> JobManager::GetResult(
    absl::string_view name, ResultKind kind) const {
  Job job;
  {
    absl::ReaderMutexLock lock(&mu_);
    TAILOR_ASSIGN_OR_RETURN(const Entry* e, Find(name));
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
    jobs_[id].running = false;
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
  ProgressAdapter progress(this, id);
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
  JobState final_state;
  JobEvent event;
  std::string report_text;
  nlohmann::json summary;
  if (report.ok()) {
    final_state = JobState::kSucceeded;
    report_text = report->dump(2) + "\n";
    summary = Summary(*report, spec);
    event = StateEvent(final_state, absl::OkStatus(), summary);
  } else if (report.status().code() == absl::StatusCode::kCancelled &&
             interrupted && !user_cancel) {
    final_state = JobState::kQueued;
    event = StateEvent(
        final_state,
        absl::UnavailableError(
            "interrupted by a server shutdown; runs again after the restart"));
  } else {
    final_state = report.status().code() == absl::StatusCode::kCancelled
                      ? JobState::kCancelled
                      : JobState::kFailed;
    event = StateEvent(final_state, report.status());
  }
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
