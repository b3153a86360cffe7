// JobManager's events: Record (the one writer of a job's changes: store
// first, then the in-memory table and cache, then the listeners), the
// retry of changes the store refused, the listeners, and ReadEvents (the
// in-memory cache, else the store).

#include <algorithm>
#include <limits>
#include <set>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "jobs/job_manager.h"
#include "util/field_error.h"
#include "util/log.h"
#include "util/status_macros.h"

namespace tailor::jobs {
namespace {

// Events a finished job keeps in memory (its watchers' usual tail).
constexpr size_t kFinishedCachedEvents = 16;

}  // namespace

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

void JobManager::FreezeStore() {
  write_mu_.Lock();  // never released: the process exits next
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

absl::StatusOr<JobManager::EventBatch> JobManager::ReadEvents(
    absl::string_view name, int64_t after_sequence, size_t max,
    bool may_read_store, const Caller& caller) const {
  if (after_sequence < 0) return FieldError("after_sequence", "must be >= 0");
  EventBatch batch;
  std::string id;
  int64_t want = 0;  // events to read from the store
  {
    absl::ReaderMutexLock lock(&mu_);
    TAILOR_ASSIGN_OR_RETURN(const Entry* e, Find(name, caller));
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
    {
      // Deleted while its events were read: the job is gone, not damaged.
      absl::ReaderMutexLock lock(&mu_);
      if (jobs_.count(id) == 0) {
        return absl::NotFoundError(absl::StrCat("no job named ", name));
      }
    }
    return absl::DataLossError(
        absl::StrCat("job store: ", name, " lacks event ", after_sequence + 1));
  }
  return batch;
}

}  // namespace tailor::jobs
