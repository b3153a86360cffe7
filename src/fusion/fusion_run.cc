// FusionRun::Run (fusion_run.h): the steps of a fusion job in order, and its
// glue to the job executor (job_executor.h): each plan item computed on a
// worker thread (ComputeItem), then committed in plan order on the calling
// thread (CommitItem), and the progress events they send.

#include "fusion/fusion_run.h"

#include <algorithm>
#include <utility>

#include "absl/strings/str_cat.h"
#include "util/device.h"
#include "util/device_stream.h"
#include "util/status_macros.h"

namespace tailor {
namespace fusion_internal {

absl::StatusOr<nlohmann::json> FusionRun::Run() {
  start_.Restart();
  TAILOR_RETURN_IF_ERROR(spec_.Validate());
  // spec_.threads and the worker slots are applied by the binary
  // (ConfigureComputeThreads, once per process): library code leaves the
  // process's thread pools and allocator alone. With a scheduler each
  // fused tensor gets its device from a lease.
  if (options_.device_scheduler == nullptr) {
    TAILOR_ASSIGN_OR_RETURN(job_device_, ResolveDevice(spec_.device));
  }
  TAILOR_RETURN_IF_ERROR(OpenInputs());
  TAILOR_RETURN_IF_ERROR(Plan());
  TAILOR_RETURN_IF_ERROR(PlanLayers());
  ExpectHessians();
  TAILOR_RETURN_IF_ERROR(OpenOutputs());
  TAILOR_RETURN_IF_ERROR(PlanShards());
  Emit(ProgressEvent::Kind::kPlanned);
  TAILOR_RETURN_IF_ERROR(OpenJournal());
  // The executor (job_executor.h): items computed on options_.workers
  // threads, costliest first, committed to the writers and the report in
  // plan order, so the outputs are those of a serial run.
  std::vector<ExecutorItem> items = ExecutorItems();
  results_.assign(plan_.size(), ItemResult{});
  ExecutorOptions exec;
  exec.workers = std::max(1, options_.workers);
  // Without a scheduler nothing budgets a CUDA device's memory: one
  // tensor at a time there (the worker slots are the CPU's).
  if (options_.device_scheduler == nullptr && !job_device_.is_cpu()) {
    exec.workers = 1;
  }
  exec.memory_budget = options_.memory_budget;
  if (exec.memory_budget == 0) {
    // Automatic: room for one largest item per worker.
    int64_t largest = 0;
    for (const ExecutorItem& item : items) {
      largest = std::max(largest, item.bytes);
    }
    exec.memory_budget = std::max<int64_t>(1, largest * exec.workers);
  }
  // Read-ahead of a few tensors per worker: cost order within it.
  exec.window = 4 * exec.workers;
  exec.cancel = options_.cancel;
  if (options_.progress != nullptr) {
    exec.on_gauges = [this](int in_flight, int queued) {
      options_.progress->OnExecutor(in_flight, queued);
    };
  }
  absl::Status run = RunOrdered(
      items, exec, [this](size_t i) { return ComputeItem(i); },
      [this](size_t i) { return CommitItem(i); });
  if (options_.progress != nullptr) options_.progress->OnExecutor(0, 0);
  if (!run.ok()) {
    if (absl::IsCancelled(run) && run.message() == kExecutorCancelled) {
      absl::MutexLock lock(&mu_);
      return absl::CancelledError(
          absl::StrCat("cancelled after ", done_, " of ", plan_.size(),
                       " tensors; no output was published"));
    }
    return run;
  }
  if (options_.shard.role == ShardOptions::Role::kShard) return FinishShard();
  TAILOR_RETURN_IF_ERROR(Publish());
  Emit(ProgressEvent::Kind::kFinished);
  return report_;
}

std::vector<ExecutorItem> FusionRun::ExecutorItems() const {
  std::vector<ExecutorItem> items;
  for (const WorkItem& item : plan_) {
    const TensorInfo& info = *item.info;
    ExecutorItem e;
    const int64_t bytes = static_cast<int64_t>(info.nbytes);
    if (!item.fuse) {
      e.cost = info.numel / 8;  // reading and writing only
      e.bytes = e.result_bytes = bytes;
    } else {
      e.cost = info.numel;
      if (spec_.method == Method::kTailor && info.shape.size() == 2) {
        for (const auto& task : tasks_) {
          if (task->calibration && task->calibration->KeyFor(info.name)) {
            e.cost = info.numel * info.shape[1];
            break;
          }
        }
      }
      const int64_t outputs =
          1 + (stitched_ ? 1 : 0) + static_cast<int64_t>(tasks_.size());
      e.result_bytes = outputs * std::max<int64_t>(bytes, info.numel * 2);
      // A streamed tensor's output went to the writer (and the journal's
      // spool): its result is the report row.
      if (StreamsOnHost(info)) e.result_bytes = 0;
      e.bytes = std::max(EstimateWorkingBytes(info), e.result_bytes);
    }
    items.push_back(e);
  }
  return items;
}

absl::Status FusionRun::ComputeItem(size_t index) {
  const WorkItem& item = plan_[index];
  const TensorInfo& info = *item.info;
  ItemResult& r = results_[index];
  if (SkippedHere(index)) {  // another shard's (or assemble's)
    hessians_.Finished(static_cast<int64_t>(index));
    absl::MutexLock lock(&mu_);
    ++done_;
    bytes_done_ += info.nbytes;
    return absl::OkStatus();
  }
  ProgressEvent event;
  event.kind = ProgressEvent::Kind::kTensorDone;
  event.tensor = info.name;
  event.device = "cpu";  // copying and resuming are host work
  if (!item.fuse) {
    TAILOR_ASSIGN_OR_RETURN(r.entry, CopyOne(info, item.why_copied));
    event.action = "copied";
    event.stats = r.entry;
  } else {
    std::optional<JournalEntry> fused;
    if (options_.shard.role == ShardOptions::Role::kAssemble) {
      TAILOR_ASSIGN_OR_RETURN(fused, FromBundle(index, info));
    } else {
      fused = Resume(index, info);
    }
    event.action = fused ? "resumed" : "fused";
    if (!fused) {
      at::Device device = job_device_;
      event.device = device.str();
      std::unique_ptr<DeviceLease> lease;  // held while computing
      if (options_.device_scheduler != nullptr) {
        const Stopwatch asked;
        TAILOR_ASSIGN_OR_RETURN(lease,
                                options_.device_scheduler->Acquire(
                                    info.name, EstimateWorkingBytes(info)));
        event.wait_seconds = asked.Seconds();
        TAILOR_ASSIGN_OR_RETURN(device, ResolveDevice(lease->device()));
        event.device = lease->name();
        absl::MutexLock lock(&mu_);
        devices_used_.insert(event.device);
      }
      const Stopwatch busy;
      if (Streams(info, device)) {
        TAILOR_ASSIGN_OR_RETURN(fused, StreamOne(index, info));
        r.written = true;
      } else {
        // Its own stream on an accelerator, drained before the lease goes.
        DeviceStreamScope stream(device);
        TAILOR_ASSIGN_OR_RETURN(fused, FuseOne(index, info, device));
      }
      event.busy_seconds = busy.Seconds();
      lease.reset();
      AddLayerParameters(index, &fused->report);
      if (options_.shard.role == ShardOptions::Role::kShard) {
        ZeroTimings(&fused->report);
      }
      if (journal_) WriteJournal(*fused);
    }
    // Frees prepared Hessians no later item needs (resumed items too).
    hessians_.Finished(static_cast<int64_t>(index));
    // The tensor's warnings as events now; the report lists them in plan
    // order (ApplyFused).
    for (const std::string& w : fused->warnings) {
      ProgressEvent warning;
      warning.kind = ProgressEvent::Kind::kWarning;
      warning.message = w;
      Emit(std::move(warning));
    }
    event.stats = fused->report;
    r.fused = std::move(fused);
  }
  absl::MutexLock lock(&mu_);
  ++done_;
  bytes_done_ += info.nbytes;
  EmitLocked(std::move(event));
  return absl::OkStatus();
}

absl::Status FusionRun::CommitItem(size_t index) {
  const WorkItem& item = plan_[index];
  ItemResult r = std::move(results_[index]);
  results_[index] = ItemResult{};
  // A shard's outputs are its journal entries (its bundle), not the writers.
  if (options_.shard.role == ShardOptions::Role::kShard) {
    return absl::OkStatus();
  }
  if (item.fuse) {
    TAILOR_ASSIGN_OR_RETURN(nlohmann::json entry,
                            ApplyFused(*item.info, *r.fused, r.written));
    tensors_.push_back(std::move(entry));
  } else {
    ++copied_tensors_;
    tensors_.push_back(std::move(r.entry));
  }
  return absl::OkStatus();
}

void FusionRun::Emit(ProgressEvent::Kind kind) {
  ProgressEvent event;
  event.kind = kind;
  Emit(event);
}

void FusionRun::Emit(ProgressEvent event) {
  absl::MutexLock lock(&mu_);
  EmitLocked(std::move(event));
}

void FusionRun::EmitLocked(ProgressEvent event)
    ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
  if (options_.progress == nullptr) return;
  event.done = done_;
  event.total = static_cast<int64_t>(plan_.size());
  event.bytes_done = bytes_done_;
  event.bytes_total = bytes_total_;
  event.elapsed_seconds = start_.Seconds();
  options_.progress->OnEvent(event);
}

void FusionRun::Note(std::string message) {
  ProgressEvent event;
  event.kind = ProgressEvent::Kind::kWarning;
  event.message = std::move(message);
  Emit(event);
}

void FusionRun::Warn(std::string message) {
  ProgressEvent event;
  event.kind = ProgressEvent::Kind::kWarning;
  event.message = message;
  absl::MutexLock lock(&mu_);
  EmitLocked(event);
  warnings_.push_back(std::move(message));
}

}  // namespace fusion_internal
}  // namespace tailor
