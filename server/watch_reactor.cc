#include "server/watch_reactor.h"

#include <utility>

#include "absl/strings/str_cat.h"
#include "server/job_convert.h"
#include "server/raw_message.h"
#include "tailor/v1/fusion_service.pb.h"

namespace tailor::server {

WatchReactor::WatchReactor(jobs::JobManager* manager,
                           BlockingExecutor* executor, RpcCounter* rpcs,
                           StreamRegistry* registry, std::string name,
                           int64_t after, jobs::Caller caller)
    : manager_(manager),
      executor_(executor),
      rpcs_(rpcs),
      registry_(registry),
      name_(std::move(name)),
      caller_(std::move(caller)),
      after_(after) {}

void WatchReactor::Start() {
  {
    // after_ is guarded; the manager's read nests under mu_ as in Pump().
    absl::MutexLock lock(&mu_);
    absl::StatusOr<jobs::JobManager::EventBatch> probe =
        manager_->ReadEvents(name_, after_, 0, false, caller_);
    if (!probe.ok()) {
      FinishLocked(probe.status());
      return;
    }
  }
  absl::StatusOr<std::string> id = jobs::JobIdFromName(name_);
  listener_ = manager_->AddListener(*id, [this] { Pump(); });
  registry_->Add(this);  // no limit on watches
  Pump();
}

void WatchReactor::Pump() {
  absl::MutexLock lock(&mu_);
  if (writing_ || finished_ || fetching_) return;
  if (!backlog_.empty()) {
    Send(backlog_.front());
    backlog_.pop_front();
    return;
  }
  absl::StatusOr<jobs::JobManager::EventBatch> batch =
      manager_->ReadEvents(name_, after_, 1, /*may_read_store=*/false, caller_);
  if (!batch.ok()) {
    FinishLocked(batch.status());
  } else if (batch->in_store) {
    fetching_ = true;
    executor_->Post([this] { Fetch(); });
  } else if (!batch->events.empty()) {
    Send(batch->events[0]);
  } else if (batch->end) {
    FinishLocked(absl::OkStatus());
  } else if (registry_->closed()) {
    FinishLocked(absl::UnavailableError(
        absl::StrCat("the server is shutting down; resume the watch with "
                     "after_sequence=",
                     after_)));
  }
}

void WatchReactor::OnWriteDone(bool ok) {
  {
    absl::MutexLock lock(&mu_);
    writing_ = false;
    if (!ok) FinishLocked(absl::CancelledError("the watcher went away"));
  }
  if (ok) Pump();
}

void WatchReactor::OnCancel() {
  absl::MutexLock lock(&mu_);
  FinishLocked(absl::CancelledError("the watcher cancelled"));
}

void WatchReactor::OnDone() {
  if (listener_ != 0) {
    manager_->RemoveListener(listener_);
    registry_->Remove(this);
  }
  {
    absl::MutexLock lock(&mu_);
    done_ = true;
    if (fetching_) return;  // Fetch() deletes the reactor
  }
  delete this;
}

void WatchReactor::Fetch() {
  int64_t after;
  {
    absl::MutexLock lock(&mu_);
    after = after_;  // no write runs while fetching_
  }
  absl::StatusOr<jobs::JobManager::EventBatch> batch = manager_->ReadEvents(
      name_, after, kFetchBatch, /*may_read_store=*/true, caller_);
  bool destroy;
  {
    absl::MutexLock lock(&mu_);
    fetching_ = false;
    destroy = done_;
    if (destroy) {
      // The RPC is over; nothing to send.
    } else if (!batch.ok()) {
      FinishLocked(batch.status());
    } else {
      backlog_.assign(batch->events.begin(), batch->events.end());
    }
  }
  if (destroy) {
    delete this;
    return;
  }
  Pump();
}

void WatchReactor::Send(const jobs::JobEvent& event) {
  tailor::v1::JobEvent message;
  EventToProto(event, &message);
  if (absl::Status s = SerializeResponse(message, &buffer_); !s.ok()) {
    FinishLocked(s);
    return;
  }
  after_ = event.sequence;
  writing_ = true;
  StartWrite(&buffer_);
}

void WatchReactor::FinishLocked(const absl::Status& status) {
  if (finished_) return;
  finished_ = true;
  Finish(rpcs_->Outcome("WatchFusionJob", status));
}

}  // namespace tailor::server
