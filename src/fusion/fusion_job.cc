#include "fusion/fusion_job.h"

#include <ATen/ATen.h>
#include <ATen/Context.h>
#include <ATen/Parallel.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <limits>
#include <set>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/synchronization/mutex.h"
#include "fusion/calibration.h"
#include "fusion/dense_merge_kernel.h"
#include "fusion/job_executor.h"
#include "fusion/journal.h"
#include "fusion/merge_methods.h"
#include "fusion/output_plan.h"
#include "fusion/patch.h"
#include "fusion/patch_stream.h"
#include "fusion/stitch_stream.h"
#include "fusion/streamed_merge.h"
#include "fusion/tailor_kernel.h"
#include "fusion/working_memory.h"
#include "io/checkpoint_writer.h"
#include "io/lora_adapter.h"
#include "io/open_checkpoint.h"
#include "io/tensor_convert.h"
#include "util/device.h"
#include "util/file_util.h"
#include "util/memory.h"
#include "util/quote.h"
#include "util/sha256.h"
#include "util/staged_output.h"
#include "util/status_macros.h"
#include "util/torch_status.h"

namespace tailor {
namespace {

using Clock = std::chrono::steady_clock;

double Seconds(Clock::time_point since) {
  return std::chrono::duration<double>(Clock::now() - since).count();
}

// Identity of an input file beyond its header: the same header with other
// values (a checkpoint rewritten in place) changes its size, mtime or inode.
nlohmann::json FileStamp(const std::string& path) {
  struct stat st;
  if (::stat(path.c_str(), &st) != 0) return {path, nullptr};
  return {path, static_cast<int64_t>(st.st_size),
          static_cast<int64_t>(st.st_mtim.tv_sec) * 1'000'000'000 +
              st.st_mtim.tv_nsec,
          static_cast<int64_t>(st.st_ino)};
}

// Per-file header fingerprints of a checkpoint-like source.
absl::StatusOr<nlohmann::json> Fingerprints(const Checkpoint& ckpt) {
  nlohmann::json files = nlohmann::json::object();
  for (const auto& f : ckpt.files()) {
    TAILOR_ASSIGN_OR_RETURN(std::string sha, HeaderFingerprint(*f));
    files[Basename(f->path())] = sha;
  }
  return files;
}

// Per-file sampled data fingerprints (DataFingerprint) of the base.
absl::StatusOr<nlohmann::json> DataFingerprints(const Checkpoint& ckpt) {
  nlohmann::json files = nlohmann::json::object();
  for (const auto& f : ckpt.files()) {
    TAILOR_ASSIGN_OR_RETURN(std::string sha, DataFingerprint(*f));
    files[Basename(f->path())] = sha;
  }
  return files;
}

// realpath(3) of `path`, or `path` itself if it cannot be resolved.
std::string CanonicalOr(const std::string& path) {
  char* real = ::realpath(path.c_str(), nullptr);
  if (real == nullptr) return path;
  std::string out(real);
  ::free(real);
  return out;
}

// Every file an open checkpoint really reads (shards resolved through
// symlinks, e.g. into a Hugging Face cache), as plan inputs.
void AddInputFiles(const Checkpoint& ckpt, const std::string& field,
                   OutputPlan* plan) {
  for (const auto& f : ckpt.files()) {
    plan->inputs.push_back({field, CanonicalOr(f->path()), false});
  }
}

// Removes stale staging entries of the plan's outputs (a writer killed
// before it could clean up; issue #10 point 17).
void CleanStaleStaging(const OutputPlan& plan) {
  for (const auto& [dir, names] : StagingDirs(plan)) {
    (void)RemoveStaleStaging(dir, names);
  }
}

// `path` as published: the writer canonicalised its parent again at
// Create(); a difference means the location changed since it was resolved.
absl::Status SameLocation(const std::string& field, const std::string& resolved,
                          const std::string& opened) {
  if (resolved == opened) return absl::OkStatus();
  return absl::FailedPreconditionError(absl::StrCat(
      field, ": the output location changed while the job started (resolved ",
      resolved, ", now ", opened, "); refusing to write there"));
}

// A fused tensor's report row (FuseOne and StreamOne alike); the caller adds
// "seconds".
nlohmann::json FusedReportEntry(const TensorInfo& info, int64_t kept,
                                const nlohmann::json& per_task) {
  return {{"name", info.name},
          {"action", "fused"},
          {"shape", info.shape},
          {"dtype", std::string(DTypeName(info.dtype))},
          {"count", info.numel},
          {"kept", kept},
          {"kept_fraction",
           info.numel ? static_cast<double>(kept) / info.numel : 0.0},
          {"tasks", per_task}};
}

nlohmann::json NumberOrNull(double v) {
  return std::isfinite(v) ? nlohmann::json(v) : nlohmann::json(nullptr);
}

struct Task {
  std::string label;
  const TaskSpec* spec = nullptr;
  std::unique_ptr<TensorSource> finetuned;
  std::unique_ptr<PatchFile> patch;
  std::unique_ptr<CalibrationFile> calibration;
  TailorOptions options;
  std::string patch_out;  // per-task patch path, if written
  std::unique_ptr<PatchWriter> patch_writer;
};

struct WorkItem {
  const TensorInfo* info = nullptr;
  bool fuse = false;
  std::string why_copied;  // for copied tensors
};

class Job {
 public:
  Job(const FusionSpec& spec, const UriResolver& resolver,
      const RunOptions& options)
      : spec_(spec), resolver_(resolver), options_(options) {}

  absl::StatusOr<nlohmann::json> Run() {
    start_ = Clock::now();
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
    ExpectHessians();
    TAILOR_RETURN_IF_ERROR(OpenOutputs());
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
    TAILOR_RETURN_IF_ERROR(Publish());
    Emit(ProgressEvent::Kind::kFinished);
    return report_;
  }

 private:
  // What plan item i left for CommitItem: written by the one worker that
  // computes it, read by the committer after the executor handed it over
  // (RunOrdered orders the two).
  struct ItemResult {
    std::optional<JournalEntry> fused;  // fused or resumed items
    nlohmann::json entry;               // copied items: the report row
    bool written = false;  // the fused tensor went to writer_ already
  };

  // The executor's view of the plan: a fused tensor costs its arithmetic
  // (rows x cols^2 for a calibrated tailor tensor: the OBS update and the
  // Hessian's preparation; its elements otherwise) and holds its working
  // memory estimate while computing, then its result (stored bytes and
  // patch entries, at most a few times the tensor) until committed; a
  // copied tensor holds its bytes.
  std::vector<ExecutorItem> ExecutorItems() const {
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
        e.bytes = std::max(EstimateWorkingBytes(info), e.result_bytes);
      }
      items.push_back(e);
    }
    return items;
  }

  // Computes plan item `index` (a worker thread): a copied tensor goes to
  // writer_ now, a fused one is resumed from the journal or computed on
  // its device (a lease's, with a scheduler) and journalled; a streamed
  // one writes its chunks to writer_ (each tensor lands at its planned
  // offset, so the order of tensors does not matter). The rest of its
  // contribution waits in results_[index] for CommitItem. Counted as done
  // (a kTensorDone event) as soon as it completes.
  absl::Status ComputeItem(size_t index) {
    const WorkItem& item = plan_[index];
    const TensorInfo& info = *item.info;
    ItemResult& r = results_[index];
    ProgressEvent event;
    event.kind = ProgressEvent::Kind::kTensorDone;
    event.tensor = info.name;
    event.device = "cpu";  // copying and resuming are host work
    if (!item.fuse) {
      TAILOR_ASSIGN_OR_RETURN(r.entry, CopyOne(info, item.why_copied));
      event.action = "copied";
      event.stats = r.entry;
    } else {
      std::optional<JournalEntry> fused = Resume(index, info);
      event.action = fused ? "resumed" : "fused";
      if (!fused) {
        at::Device device = job_device_;
        event.device = device.str();
        std::unique_ptr<DeviceLease> lease;  // held while computing
        if (options_.device_scheduler != nullptr) {
          const auto asked = Clock::now();
          TAILOR_ASSIGN_OR_RETURN(lease,
                                  options_.device_scheduler->Acquire(
                                      info.name, EstimateWorkingBytes(info)));
          event.wait_seconds = Seconds(asked);
          TAILOR_ASSIGN_OR_RETURN(device, ResolveDevice(lease->device()));
          event.device = lease->name();
          absl::MutexLock lock(&mu_);
          devices_used_.insert(event.device);
        }
        const auto busy = Clock::now();
        if (Streams(info, device)) {
          TAILOR_ASSIGN_OR_RETURN(fused, StreamOne(index, info));
          r.written = true;
        } else {
          TAILOR_ASSIGN_OR_RETURN(fused, FuseOne(index, info, device));
        }
        event.busy_seconds = Seconds(busy);
        lease.reset();
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

  // Feeds plan item `index`'s result to the writers and the report (the
  // calling thread, in plan order).
  absl::Status CommitItem(size_t index) {
    const WorkItem& item = plan_[index];
    ItemResult r = std::move(results_[index]);
    results_[index] = ItemResult{};
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

  void Emit(ProgressEvent::Kind kind) {
    ProgressEvent event;
    event.kind = kind;
    Emit(event);
  }
  void Emit(ProgressEvent event) {
    absl::MutexLock lock(&mu_);
    EmitLocked(std::move(event));
  }
  // Events go out one at a time, with the counters they carry.
  void EmitLocked(ProgressEvent event) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    if (options_.progress == nullptr) return;
    event.done = done_;
    event.total = static_cast<int64_t>(plan_.size());
    event.bytes_done = bytes_done_;
    event.bytes_total = bytes_total_;
    event.elapsed_seconds = Seconds(start_);
    options_.progress->OnEvent(event);
  }
  // A warning event that the report does not list (journal notes: they
  // would make a resumed run's report differ from an uninterrupted one's).
  void Note(std::string message) {
    ProgressEvent event;
    event.kind = ProgressEvent::Kind::kWarning;
    event.message = std::move(message);
    Emit(event);
  }
  void Warn(std::string message) {
    ProgressEvent event;
    event.kind = ProgressEvent::Kind::kWarning;
    event.message = message;
    absl::MutexLock lock(&mu_);
    EmitLocked(event);
    warnings_.push_back(std::move(message));
  }

  absl::Status OpenInputs() {
    TAILOR_ASSIGN_OR_RETURN(base_,
                            OpenCheckpointUri(spec_.pretrained_uri, resolver_));
    for (const std::string& w : base_->warnings()) Warn(w);
    TAILOR_ASSIGN_OR_RETURN(nlohmann::json base_fp, Fingerprints(*base_));
    TAILOR_ASSIGN_OR_RETURN(nlohmann::json base_data, DataFingerprints(*base_));
    sources_.push_back({{"role", "pretrained"},
                        {"uri", spec_.pretrained_uri},
                        {"files", base_fp},
                        {"data_samples", base_data}});
    Checkpoint::Options open;
    open.resolver = &resolver_;
    for (size_t i = 0; i < spec_.tasks.size(); ++i) {
      const TaskSpec& ts = spec_.tasks[i];
      auto task = std::make_unique<Task>();
      task->spec = &ts;
      task->label = ts.label.empty() ? absl::StrCat("task", i) : ts.label;
      task->options = spec_.tailor;
      if (ts.keep_ratio) task->options.keep_ratio = *ts.keep_ratio;
      if (ts.omega) task->options.omega = *ts.omega;
      if (spec_.method == Method::kMagnitude) {
        task->options.omega = 1.0;
        task->options.compensation = Compensation::kNone;
      }
      if (!ts.patch_uri.empty()) {
        TAILOR_ASSIGN_OR_RETURN(std::string path,
                                resolver_.ResolveExisting(ts.patch_uri));
        TAILOR_ASSIGN_OR_RETURN(task->patch, PatchFile::Open(path, open));
        TAILOR_ASSIGN_OR_RETURN(std::string sha,
                                HeaderFingerprint(path, resolver_));
        sources_.push_back({{"role", "patch"},
                            {"label", task->label},
                            {"uri", ts.patch_uri},
                            {"sha256", sha}});
      } else {
        TAILOR_ASSIGN_OR_RETURN(
            task->finetuned,
            OpenFineTunedUri(ts.finetuned_uri, *base_, resolver_));
        nlohmann::json fp;
        if (auto* ckpt =
                dynamic_cast<const Checkpoint*>(task->finetuned.get())) {
          TAILOR_ASSIGN_OR_RETURN(fp, Fingerprints(*ckpt));
        } else if (auto* lora = dynamic_cast<const LoraFineTuned*>(
                       task->finetuned.get())) {
          TAILOR_ASSIGN_OR_RETURN(fp, Fingerprints(lora->adapter()));
        }
        sources_.push_back({{"role", "finetuned"},
                            {"label", task->label},
                            {"uri", ts.finetuned_uri},
                            {"files", fp}});
      }
      if (!ts.hessian_uri.empty()) {
        TAILOR_ASSIGN_OR_RETURN(std::string path,
                                resolver_.ResolveExisting(ts.hessian_uri));
        TAILOR_ASSIGN_OR_RETURN(task->calibration,
                                CalibrationFile::Open(path, open));
        TAILOR_ASSIGN_OR_RETURN(std::string sha,
                                HeaderFingerprint(path, resolver_));
        sources_.push_back({{"role", "hessians"},
                            {"label", task->label},
                            {"uri", ts.hessian_uri},
                            {"sha256", sha}});
      }
      tasks_.push_back(std::move(task));
    }
    return absl::OkStatus();
  }

  // Why `task` cannot be paired with base tensor `info`; empty if it can.
  std::string Mismatch(const Task& task, const TensorInfo& info) const {
    if (task.patch) {
      const PatchFile::TensorEntry* e = task.patch->Find(info.name);
      if (e != nullptr && e->shape != info.shape) {
        return absl::StrCat("patch of task '", task.label, "' has shape ",
                            c10::str(at::IntArrayRef(e->shape)), " for ",
                            Quote(info.name), ", the base has ",
                            c10::str(at::IntArrayRef(info.shape)));
      }
      return "";
    }
    const TensorInfo* ft = task.finetuned->Find(info.name);
    if (ft == nullptr) {
      return absl::StrCat("task '", task.label, "' (",
                          task.finetuned->description(), ") has no tensor ",
                          Quote(info.name));
    }
    if (ft->shape != info.shape || ft->dtype != info.dtype) {
      return absl::StrCat("task '", task.label, "' has ", Quote(info.name),
                          " as ", DTypeName(ft->dtype), " ",
                          c10::str(at::IntArrayRef(ft->shape)),
                          ", the base as ", DTypeName(info.dtype), " ",
                          c10::str(at::IntArrayRef(info.shape)));
    }
    return "";
  }

  // Tells the prepared-Hessian cache which plan positions use each
  // (task, Hessian key), so an entry lives from its first user to its last.
  void ExpectHessians() {
    if (spec_.method != Method::kTailor) return;
    for (size_t i = 0; i < plan_.size(); ++i) {
      const WorkItem& item = plan_[i];
      if (!item.fuse || item.info->shape.size() != 2) continue;
      for (size_t t = 0; t < tasks_.size(); ++t) {
        if (!tasks_[t]->calibration) continue;
        if (std::optional<std::string> key =
                tasks_[t]->calibration->KeyFor(item.info->name)) {
          hessians_.Expect(static_cast<int>(t), *key, static_cast<int64_t>(i));
        }
      }
    }
  }

  absl::Status Plan() {
    // RE2: linear in each name, whatever the pattern (Validate compiled it).
    TAILOR_ASSIGN_OR_RETURN(const TensorFilter filter,
                            TensorFilter::Compile(spec_));
    for (const TensorInfo& info : base_->tensors()) {
      WorkItem item;
      item.info = &info;
      bytes_total_ += info.nbytes;
      const bool included = filter.Included(info.name);
      const bool excluded = filter.Excluded(info.name);
      if (!IsFloatingDType(info.dtype)) {
        item.why_copied = "not a floating-point tensor";
      } else if (!included) {
        item.why_copied = "not matched by include";
      } else if (excluded) {
        item.why_copied = "matched by exclude";
      } else {
        for (const auto& task : tasks_) {
          std::string why = Mismatch(*task, info);
          if (why.empty()) continue;
          if (spec_.on_mismatch == MismatchPolicy::kError) {
            return absl::InvalidArgumentError(absl::StrCat(
                why, " (set on_mismatch: copy_base to keep the base tensor)"));
          }
          Warn(absl::StrCat(why, "; copied from the base"));
          item.why_copied = why;
          break;
        }
        item.fuse = item.why_copied.empty();
      }
      plan_.push_back(std::move(item));
    }
    // A calibration file that calibrates nothing is most likely for another
    // model (or the filters exclude what it covers): say so.
    for (const auto& task : tasks_) {
      if (!task->calibration) continue;
      const bool used =
          std::any_of(plan_.begin(), plan_.end(), [&](const WorkItem& item) {
            return item.fuse && item.info->shape.size() == 2 &&
                   task->calibration->KeyFor(item.info->name).has_value();
          });
      if (!used) {
        Warn(absl::StrCat("task '", task->label, "': calibration file ",
                          task->calibration->path(),
                          " has a Hessian for none of the fused tensors; the "
                          "task is fused without calibration"));
      }
    }
    // Fine-tuned tensors the base lacks are never silently dropped.
    for (const auto& task : tasks_) {
      const std::vector<std::string> names = TaskTensorNames(*task);
      for (const std::string& name : names) {
        if (base_->Find(name) != nullptr) continue;
        std::string why =
            absl::StrCat("task '", task->label, "' has tensor ", Quote(name),
                         " which the base checkpoint lacks");
        if (task->patch || spec_.on_mismatch == MismatchPolicy::kError) {
          return absl::InvalidArgumentError(why);
        }
        Warn(absl::StrCat(why, "; ignored"));
      }
    }
    return absl::OkStatus();
  }

  static std::vector<std::string> TaskTensorNames(const Task& task) {
    std::vector<std::string> names;
    if (task.patch) {
      for (const auto& e : task.patch->tensors()) names.push_back(e.name);
    } else {
      for (const auto& t : task.finetuned->tensors()) names.push_back(t.name);
    }
    return names;
  }

  absl::Status OpenOutputs() {
    // The output plan (issue #10), checked again now that the inputs are
    // open, with every file they really read.
    TAILOR_ASSIGN_OR_RETURN(OutputPlan plan,
                            ResolveOutputPlan(spec_, resolver_));
    AddInputFiles(*base_, "pretrained", &plan);
    for (size_t i = 0; i < tasks_.size(); ++i) {
      const Task& task = *tasks_[i];
      const std::string f = absl::StrCat("tasks[", i, "].");
      if (task.patch) {
        plan.inputs.push_back(
            {f + "patch", CanonicalOr(task.patch->path()), false});
      }
      if (task.calibration) {
        plan.inputs.push_back(
            {f + "hessians", CanonicalOr(task.calibration->path()), false});
      }
      if (auto* c = dynamic_cast<const Checkpoint*>(task.finetuned.get())) {
        AddInputFiles(*c, f + "finetuned", &plan);
      } else if (auto* lora =
                     dynamic_cast<const LoraFineTuned*>(task.finetuned.get())) {
        AddInputFiles(lora->adapter(), f + "finetuned", &plan);
      }
    }
    TAILOR_RETURN_IF_ERROR(CheckOutputPlan(plan, resolver_));
    CleanStaleStaging(plan);
    auto planned = [&](absl::string_view field) -> std::string {
      for (const OutputPlan::Entry& o : plan.outputs) {
        if (o.field == field) return o.path;
      }
      return "";
    };
    if (!spec_.output_uri.empty()) {
      const std::string out = planned("out");
      CheckpointWriterOptions options;
      options.preserve_file_assignment = true;
      options.overwrite = spec_.overwrite;
      options.copy_files_from = base_->directory();
      TAILOR_ASSIGN_OR_RETURN(
          writer_, CheckpointWriter::Create(out, base_->tensors(), options));
      TAILOR_RETURN_IF_ERROR(SameLocation("out", out, writer_->out_dir()));
    }
    if (!spec_.patch_uri.empty()) {
      patch_path_ = planned("patch_out");
      TAILOR_ASSIGN_OR_RETURN(
          stitched_, PatchWriter::Create(patch_path_, spec_.overwrite));
      TAILOR_RETURN_IF_ERROR(
          SameLocation("patch_out", patch_path_, stitched_->path()));
      if (WritesTaskPatches(spec_)) {
        for (size_t i = 0; i < tasks_.size(); ++i) {
          Task* task = tasks_[i].get();
          if (task->patch) continue;  // already a patch
          task->patch_out = TaskPatchPath(patch_path_, TaskLabel(spec_, i));
          TAILOR_ASSIGN_OR_RETURN(
              task->patch_writer,
              PatchWriter::Create(task->patch_out, spec_.overwrite));
          TAILOR_RETURN_IF_ERROR(SameLocation("patch_out", task->patch_out,
                                              task->patch_writer->path()));
        }
      }
    }
    if (!spec_.report_uri.empty()) {
      report_path_ = planned("report");
      TAILOR_ASSIGN_OR_RETURN(
          report_out_,
          StagedOutput::Create(report_path_, StagedOutput::Kind::kFile,
                               spec_.overwrite));
      TAILOR_RETURN_IF_ERROR(
          SameLocation("report", report_path_, report_out_->path()));
    }
    return absl::OkStatus();
  }

  // What a journal must have been written by: this spec over these inputs.
  nlohmann::json JournalIdentity() const {
    nlohmann::json files = nlohmann::json::array();
    auto stamp = [&](const Checkpoint& ckpt) {
      for (const auto& f : ckpt.files()) files.push_back(FileStamp(f->path()));
    };
    stamp(*base_);
    for (const auto& task : tasks_) {
      if (task->patch) files.push_back(FileStamp(task->patch->path()));
      if (task->calibration) {
        files.push_back(FileStamp(task->calibration->path()));
      }
      if (auto* c = dynamic_cast<const Checkpoint*>(task->finetuned.get())) {
        stamp(*c);
      } else if (auto* lora = dynamic_cast<const LoraFineTuned*>(
                     task->finetuned.get())) {
        stamp(lora->adapter());
      }
    }
    return {{"spec_sha256", Sha256Hex(spec_.ToJson().dump())},
            {"sources", sources_},
            {"files", files}};
  }

  absl::Status OpenJournal() {
    if (options_.journal_dir.empty()) return absl::OkStatus();
    TAILOR_ASSIGN_OR_RETURN(
        FusionJournal::Opened opened,
        FusionJournal::Open(options_.journal_dir, JournalIdentity(),
                            JournalLimits{options_.journal_max_bytes,
                                          options_.journal_reserve_bytes}));
    journal_ = std::move(opened.journal);
    if (opened.discarded) {
      Note(absl::StrCat("journal ", options_.journal_dir,
                        " belonged to another spec or other inputs; "
                        "discarded, starting from the first tensor"));
    } else if (opened.entries > 0) {
      Note(absl::StrCat("resuming from journal ", options_.journal_dir, ": ",
                        opened.entries, " fused tensors already done"));
    }
    return absl::OkStatus();
  }

  // The journal is an optimisation: when it cannot be written (a full data
  // volume) the job goes on without it, and a later run recomputes what it
  // lacks.
  void WriteJournal(const JournalEntry& entry) {
    absl::MutexLock lock(&journal_mu_);
    if (journal_failed_) return;
    const absl::Status s = journal_->Write(entry);
    if (s.ok()) return;
    Note(absl::StrCat("journal ", journal_->dir(), ": cannot record tensor ",
                      entry.index, " ('", entry.name, "'): ", s.message(),
                      "; continuing without the journal"));
    journal_failed_ = true;
  }

  // A journal spool for the stored bytes of streamed tensor `index`, or
  // null without a journal. When the journal cannot take them (its limits)
  // the job goes on without it, as WriteJournal does.
  std::shared_ptr<JournalFusedSpool> BeginSpool(size_t index,
                                                const TensorInfo& info) {
    if (!journal_) return nullptr;
    absl::MutexLock lock(&journal_mu_);
    if (journal_failed_) return nullptr;
    absl::StatusOr<std::unique_ptr<JournalFusedSpool>> spool =
        journal_->BeginFused(static_cast<int64_t>(index), info.nbytes);
    if (spool.ok()) return std::move(*spool);
    DropJournal(static_cast<int64_t>(index), info.name, spool.status());
    return nullptr;
  }
  // Appends a streamed chunk to `spool` (if any; each spool belongs to one
  // worker); a failed write (ENOSPC) drops the spool and the journal, never
  // the job.
  void Spool(std::shared_ptr<JournalFusedSpool>& spool,
             absl::string_view bytes) {
    if (!spool) return;
    const absl::Status s = spool->Append(bytes);
    if (s.ok()) return;
    spool.reset();
    absl::MutexLock lock(&journal_mu_);
    if (!journal_failed_) DropJournal(-1, "", s);
  }
  // The job goes on without the journal (journal_failed_: nothing more is
  // written to it, and it stays open for the writes in flight to fail).
  void DropJournal(int64_t index, const std::string& name,
                   const absl::Status& why)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(journal_mu_) {
    Note(absl::StrCat("journal ", journal_->dir(), ": cannot record tensor ",
                      index >= 0 ? absl::StrCat(index, " ('", name, "')")
                                 : std::string("being streamed"),
                      ": ", why.message(), "; continuing without the journal"));
    journal_failed_ = true;
  }

  // The journal's entry for plan item `index`, if it has a valid one that
  // fits this job's outputs; otherwise nullopt (and a note if it was
  // damaged), and the tensor is computed again.
  std::optional<JournalEntry> Resume(size_t index, const TensorInfo& info) {
    if (!journal_ || !journal_->Has(static_cast<int64_t>(index))) {
      return std::nullopt;
    }
    absl::StatusOr<JournalEntry> e =
        journal_->Read(static_cast<int64_t>(index));
    absl::Status fits = e.status();
    if (fits.ok() &&
        (e->name != info.name || (writer_ && e->FusedBytes() != info.nbytes) ||
         (stitched_ && e->FindPatch("stitched") == nullptr))) {
      fits = absl::InvalidArgumentError("it does not fit the plan");
    }
    for (size_t t = 0; fits.ok() && t < tasks_.size(); ++t) {
      if (tasks_[t]->patch_writer &&
          e->FindPatch(absl::StrCat("task", t)) == nullptr) {
        fits = absl::InvalidArgumentError("it lacks a per-task patch");
      }
    }
    if (!fits.ok()) {
      Note(
          absl::StrCat("journal entry ", index, " ('", info.name,
                       "') is unusable, computing it again: ", fits.message()));
      return std::nullopt;
    }
    absl::MutexLock lock(&mu_);
    ++resumed_tensors_;
    return *std::move(e);
  }

  // FuseOne's peak working memory for `info` (fusion/working_memory.h).
  int64_t EstimateWorkingBytes(const TensorInfo& info) const {
    std::vector<WorkingMemoryTask> tasks;
    for (const auto& task : tasks_) {
      WorkingMemoryTask w;
      if (task->calibration) {
        w.hessian_key = task->calibration->KeyFor(info.name);
      }
      w.options = task->options;
      tasks.push_back(std::move(w));
    }
    return tailor::EstimateWorkingBytes(spec_, info, tasks, hessians_,
                                        /*concurrent=*/options_.workers > 1);
  }

  ReadOptions ComputeRead(const at::Device& device) const {
    ReadOptions r;
    r.floating_dtype = spec_.tailor.float64 ? at::kDouble : at::kFloat;
    r.device = device;
    return r;
  }

  // Whether fused tensor `info` streams (StreamOne) rather than being
  // computed whole (FuseOne): a data-free elementwise merge (task
  // arithmetic, DARE) on the CPU whose only output is the fused checkpoint
  // (patches are packed per whole tensor), with every task a safetensors
  // checkpoint (a LoRA view is computed whole) and a stored dtype LibTorch
  // has; or stitching task patches only (StitchesPatches: every output
  // streams). Never with options_.stream_chunk_elements <= 0.
  //
  // Magnitude, TIES and SPIDER stream as well (streamed_merge.h: a
  // tensor-wide statistic in passes over the chunks, then the output pass),
  // on a floating stored dtype. Magnitude streams only the selections it
  // can reproduce exactly: min-max normalisation with Scope::kLayer, or
  // Scope::kRow on a tensor scored as one row (not 2-D, or one row), in
  // the job's compute type; z-score normalisation, Scope::kBlock and
  // several-row Scope::kRow are computed whole.
  bool Streams(const TensorInfo& info, const at::Device& device) const {
    if (options_.stream_chunk_elements <= 0) return false;
    if (StitchesPatches()) {
      // Every output (fused checkpoint, stitched patch) streams.
      return device.is_cpu() && info.numel > 0 &&
             ToScalarType(info.dtype).has_value();
    }
    const bool threshold = spec_.method == Method::kMagnitude ||
                           spec_.method == Method::kTies ||
                           spec_.method == Method::kSpider;
    if (spec_.method != Method::kTaskArithmetic &&
        spec_.method != Method::kDare && !threshold) {
      return false;
    }
    if (!writer_ || stitched_ || !device.is_cpu() || info.numel == 0 ||
        !ToScalarType(info.dtype).has_value()) {
      return false;
    }
    if (threshold && !at::isFloatingType(*ToScalarType(info.dtype))) {
      return false;
    }
    for (const auto& task : tasks_) {
      if (task->patch || task->patch_writer ||
          dynamic_cast<const Checkpoint*>(task->finetuned.get()) == nullptr) {
        return false;
      }
      if (spec_.method == Method::kMagnitude) {
        const TailorOptions& o = task->options;
        const bool one_row = info.shape.size() != 2 || info.shape[0] == 1;
        if (o.normalization != Normalization::kMinMax ||
            o.float64 != spec_.tailor.float64 ||
            !(o.scope == Scope::kLayer ||
              (o.scope == Scope::kRow && one_row))) {
          return false;
        }
      }
    }
    return true;
  }

  // StreamOne for magnitude, TIES and SPIDER (streamed_merge.h). A tensor
  // holding a non-finite input or delta is computed whole by FuseOne
  // (nothing of it has been written yet), which reports it as before, and
  // written from its result.
  absl::StatusOr<JournalEntry> StreamThreshold(size_t index,
                                               const TensorInfo& info) {
    const auto t0 = Clock::now();
    StreamedTensor t;
    t.name = info.name;
    t.stored = *ToScalarType(info.dtype);
    t.numel = info.numel;
    t.element_size = info.nbytes / static_cast<uint64_t>(info.numel);
    t.chunk = std::clamp<int64_t>(options_.stream_chunk_elements, 1, t.numel);
    t.base = base_.get();
    t.float64 = spec_.tailor.float64;
    StreamedMergeOptions o;
    o.method = spec_.method == Method::kMagnitude ? StreamedMethod::kMagnitude
               : spec_.method == Method::kTies    ? StreamedMethod::kTies
                                                  : StreamedMethod::kSpider;
    o.aggregation = spec_.aggregation;
    o.density = spec_.density;
    o.lambda = spec_.lambda;
    for (const auto& task : tasks_) {
      t.finetuned.push_back(
          dynamic_cast<const Checkpoint*>(task->finetuned.get()));
      o.keep_ratio.push_back(task->options.keep_ratio);
    }
    // The streamed bytes go to the journal chunk by chunk (BeginSpool).
    std::shared_ptr<JournalFusedSpool> spool;
    bool spooling = true;
    std::optional<CheckpointWriter::TensorStream> stream;
    auto write = [&](absl::string_view bytes) -> absl::Status {
      if (!stream) {
        TAILOR_ASSIGN_OR_RETURN(stream, writer_->BeginTensor(info.name));
        if (spooling) spool = BeginSpool(index, info);
      }
      TAILOR_RETURN_IF_ERROR(writer_->WriteChunk(&*stream, bytes));
      Spool(spool, bytes);
      return absl::OkStatus();
    };
    TAILOR_ASSIGN_OR_RETURN(StreamedMergeResult r, CatchTorch(info.name, [&] {
                              return StreamThresholdMerge(t, o, write);
                            }));
    if (!r.streamed) {
      // Computed whole, then written here as StreamOne's caller expects.
      // The whole tensor is in memory already: its journal entry holds the
      // bytes (`fused`), not a spool.
      spool.reset();
      spooling = false;
      TAILOR_ASSIGN_OR_RETURN(JournalEntry whole,
                              FuseOne(index, info, at::Device(at::kCPU)));
      if (whole.fused) TAILOR_RETURN_IF_ERROR(write(*whole.fused));
      if (!journal_) whole.fused.reset();
      if (stream) TAILOR_RETURN_IF_ERROR(writer_->EndTensor(&*stream));
      return whole;
    }
    TAILOR_RETURN_IF_ERROR(writer_->EndTensor(&*stream));
    hessians_.Finished(static_cast<int64_t>(index));
    JournalEntry out;
    out.index = static_cast<int64_t>(index);
    out.name = info.name;
    out.fused_spool = std::move(spool);
    nlohmann::json per_task = nlohmann::json::array();
    for (size_t i = 0; i < tasks_.size(); ++i) {
      nlohmann::json tj = {{"label", tasks_[i]->label}};
      if (spec_.method == Method::kMagnitude) {
        // TailorLayerPrepared's stats without a Hessian.
        const int64_t kept = r.task_kept[i];
        tj["kept"] = kept;
        tj["kept_fraction"] = static_cast<double>(kept) / info.numel;
        tj["hessian"] = false;
        tj["compensation"] = "none";
        tj["seconds"] = Seconds(t0);
      }
      per_task.push_back(std::move(tj));
    }
    nlohmann::json entry = FusedReportEntry(info, r.kept, per_task);
    entry["seconds"] = Seconds(t0);
    out.report = std::move(entry);
    return out;
  }

  // FuseOne for a tensor that Streams(): reads the base and fine-tuned
  // tensors in consecutive chunks of options_.stream_chunk_elements
  // elements into buffers allocated once per tensor, merges, fuses and
  // converts each chunk, and writes it straight to writer_ (the caller
  // must not write the tensor again). Working memory is a few chunks,
  // not the tensor; with a journal the stored bytes are spooled to it chunk
  // by chunk (BeginSpool, a sidecar file). Every operation is
  // elementwise and the same as FuseOne's (DARE draws each task's
  // generator in the same element order), so the output bytes and the
  // report are identical. A NaN/Inf input is reported at the first chunk
  // holding one (pre-trained before fine-tuned within a chunk).
  absl::StatusOr<JournalEntry> StreamOne(size_t index, const TensorInfo& info) {
    if (StitchesPatches()) return StreamStitch(index, info);
    if (spec_.method != Method::kTaskArithmetic &&
        spec_.method != Method::kDare) {
      return StreamThreshold(index, info);
    }
    const auto t0 = Clock::now();
    const std::string& name = info.name;
    JournalEntry out;
    out.index = static_cast<int64_t>(index);
    out.name = name;
    std::vector<const Checkpoint*> fts;
    nlohmann::json per_task = nlohmann::json::array();
    for (const auto& task : tasks_) {
      fts.push_back(dynamic_cast<const Checkpoint*>(task->finetuned.get()));
      per_task.push_back({{"label", task->label}});
    }
    const at::ScalarType stored = *ToScalarType(info.dtype);
    const at::ScalarType compute =
        spec_.tailor.float64 ? at::kDouble : at::kFloat;
    const int64_t n = info.numel;
    const uint64_t esize = info.nbytes / static_cast<uint64_t>(n);
    const int64_t chunk =
        std::clamp<int64_t>(options_.stream_chunk_elements, 1, n);
    std::shared_ptr<JournalFusedSpool> spool = BeginSpool(index, info);
    int64_t kept = 0;
    TAILOR_ASSIGN_OR_RETURN(CheckpointWriter::TensorStream stream,
                            writer_->BeginTensor(name));
    TAILOR_RETURN_IF_ERROR(CatchTorch(name, [&]() -> absl::Status {
      auto buffer = [&](at::ScalarType t) {
        return at::empty({chunk}, at::TensorOptions().dtype(t));
      };
      // Reused for every chunk: raw input, pre-trained, one delta per task,
      // the mask, float32 views of pre and delta (float64 compute), the
      // fused chunk and its stored form.
      at::Tensor raw = buffer(stored);
      at::Tensor pre_buf = buffer(compute);
      std::vector<at::Tensor> delta_buf;
      for (size_t t = 0; t < fts.size(); ++t) {
        delta_buf.push_back(buffer(compute));
      }
      at::Tensor mask_buf = buffer(at::kBool);
      at::Tensor pre_f_buf, delta_f_buf;
      if (compute != at::kFloat) {
        pre_f_buf = buffer(at::kFloat);
        delta_f_buf = buffer(at::kFloat);
      }
      at::Tensor fused_buf = buffer(at::kFloat);
      at::Tensor out_buf = stored == at::kFloat ? fused_buf : buffer(stored);
      ChunkedDenseMerge merge =
          spec_.method == Method::kDare
              ? ChunkedDenseMerge::Dare(static_cast<int64_t>(fts.size()),
                                        spec_.drop, spec_.lambda, spec_.seed,
                                        name)
              : ChunkedDenseMerge::TaskArithmetic(
                    static_cast<int64_t>(fts.size()), spec_.lambda);
      std::vector<at::Tensor> deltas(fts.size());
      // BF16 task arithmetic in float32 (the common case): one fused pass
      // per chunk (dense_merge_kernel.h), the tensor ops below only for a
      // chunk holding a non-finite value.
      const bool fused_pass = spec_.method == Method::kTaskArithmetic &&
                              stored == at::kBFloat16 && compute == at::kFloat;
      std::vector<at::Tensor> raw_ft;
      std::vector<const uint16_t*> ft_bits;
      if (fused_pass) {
        for (size_t t = 0; t < fts.size(); ++t) {
          raw_ft.push_back(buffer(stored));
          ft_bits.push_back(
              static_cast<const uint16_t*>(raw_ft.back().data_ptr()));
        }
      }
      for (int64_t off = 0; off < n; off += chunk) {
        const int64_t m = std::min(chunk, n - off);
        auto view = [m](const at::Tensor& t) { return t.narrow(0, 0, m); };
        const uint64_t byte_off = static_cast<uint64_t>(off) * esize;
        const uint64_t byte_len = static_cast<uint64_t>(m) * esize;
        if (fused_pass) {
          TAILOR_RETURN_IF_ERROR(
              base_->ReadRawRange(name, byte_off, byte_len, raw.data_ptr()));
          for (size_t t = 0; t < fts.size(); ++t) {
            TAILOR_RETURN_IF_ERROR(fts[t]->ReadRawRange(
                name, byte_off, byte_len, raw_ft[t].data_ptr()));
          }
          int64_t chunk_kept = 0;
          if (TaskArithmeticBf16Chunk(
                  static_cast<const uint16_t*>(raw.data_ptr()), ft_bits, m,
                  spec_.lambda, static_cast<uint16_t*>(out_buf.data_ptr()),
                  &chunk_kept)) {
            kept += chunk_kept;
            const absl::string_view bytes(
                static_cast<const char*>(out_buf.data_ptr()), byte_len);
            TAILOR_RETURN_IF_ERROR(writer_->WriteChunk(&stream, bytes));
            Spool(spool, bytes);
            continue;
          }
        }
        // Reads elements [off, off + m) of `src` into `dst` (compute type).
        auto read = [&](const Checkpoint& src, const at::Tensor& dst) {
          const at::Tensor& into = stored == compute ? dst : view(raw);
          TAILOR_RETURN_IF_ERROR(
              src.ReadRawRange(name, byte_off, byte_len, into.data_ptr()));
          if (stored != compute) dst.copy_(into);
          return absl::OkStatus();
        };
        at::Tensor pre = view(pre_buf);
        TAILOR_RETURN_IF_ERROR(read(*base_, pre));
        TAILOR_RETURN_IF_ERROR(
            CheckFiniteTensor(pre, name, "pre-trained tensor"));
        for (size_t t = 0; t < fts.size(); ++t) {
          deltas[t] = view(delta_buf[t]);
          TAILOR_RETURN_IF_ERROR(read(*fts[t], deltas[t]));
          TAILOR_RETURN_IF_ERROR(
              CheckFiniteTensor(deltas[t], name, "fine-tuned tensor"));
          deltas[t].sub_(pre);  // ft - pre
        }
        merge.Merge(deltas);
        at::Tensor delta = deltas[0];
        at::Tensor mask = view(mask_buf);
        at::ne_out(mask, delta, 0);
        kept += mask.sum().item<int64_t>();
        // FuseTensor: float32 pre + float32 delta where the mask holds,
        // float32 pre elsewhere; then the stored dtype (ToStoredTensor).
        at::Tensor pre_f = pre, delta_f = delta;
        if (compute != at::kFloat) {
          pre_f = view(pre_f_buf);
          pre_f.copy_(pre);
          delta_f = view(delta_f_buf);
          delta_f.copy_(delta);
        }
        delta_f.add_(pre_f);  // pre + delta: addition commutes exactly
        at::Tensor fused = view(fused_buf);
        at::where_out(fused, mask, delta_f, pre_f);
        at::Tensor stored_chunk = view(out_buf);
        if (stored != at::kFloat) stored_chunk.copy_(fused);
        const absl::string_view bytes(
            static_cast<const char*>(stored_chunk.data_ptr()),
            static_cast<size_t>(m) * esize);
        TAILOR_RETURN_IF_ERROR(writer_->WriteChunk(&stream, bytes));
        Spool(spool, bytes);
      }
      return absl::OkStatus();
    }));
    TAILOR_RETURN_IF_ERROR(writer_->EndTensor(&stream));
    hessians_.Finished(static_cast<int64_t>(index));
    out.fused_spool = std::move(spool);
    nlohmann::json entry = FusedReportEntry(info, kept, per_task);
    entry["seconds"] = Seconds(t0);
    out.report = std::move(entry);
    return out;
  }

  // Whether the job stitches task patches only (tailor or magnitude, every
  // task a patch): no fine-tuned tensor is read and every merge is
  // elementwise, so tensors stream (StreamStitch).
  bool StitchesPatches() const {
    if (spec_.method != Method::kTailor && spec_.method != Method::kMagnitude) {
      return false;
    }
    return std::all_of(tasks_.begin(), tasks_.end(),
                       [](const auto& task) { return task->patch != nullptr; });
  }

  // FuseOne for a tensor stitched from patches only (StitchesPatches() and
  // Streams()): StreamStitchedTensor (stitch_stream.h) in chunks of
  // options_.stream_chunk_elements, each chunk written straight to writer_
  // (the caller must not write the tensor again). The same bytes, stitched
  // patch entry and report entry as FuseOne. Working memory is a few chunks
  // plus the stitched patch entry when there is a patch output; with a
  // journal and a fused checkpoint the stored bytes are spooled to it.
  absl::StatusOr<JournalEntry> StreamStitch(size_t index,
                                            const TensorInfo& info) {
    const auto t0 = Clock::now();
    const std::string& name = info.name;
    JournalEntry out;
    out.index = static_cast<int64_t>(index);
    out.name = name;
    std::vector<const PatchFile*> patches;
    for (const auto& task : tasks_) {
      patches.push_back(task->patch->Find(name) != nullptr ? task->patch.get()
                                                           : nullptr);
    }
    const at::ScalarType compute =
        spec_.tailor.float64 ? at::kDouble : at::kFloat;
    std::shared_ptr<JournalFusedSpool> spool;
    if (writer_) spool = BeginSpool(index, info);
    CheckpointWriter::TensorStream stream;
    if (writer_) {
      TAILOR_ASSIGN_OR_RETURN(stream, writer_->BeginTensor(name));
    }
    auto sink = [&](absl::string_view bytes) -> absl::Status {
      if (!writer_) return absl::OkStatus();
      TAILOR_RETURN_IF_ERROR(writer_->WriteChunk(&stream, bytes));
      Spool(spool, bytes);
      return absl::OkStatus();
    };
    TAILOR_ASSIGN_OR_RETURN(
        StitchStreamResult r,
        StreamStitchedTensor(*base_, info, patches, spec_.aggregation, compute,
                             options_.stream_chunk_elements,
                             stitched_ != nullptr, sink));
    if (writer_) TAILOR_RETURN_IF_ERROR(writer_->EndTensor(&stream));
    hessians_.Finished(static_cast<int64_t>(index));
    nlohmann::json per_task = nlohmann::json::array();
    for (size_t t = 0; t < tasks_.size(); ++t) {
      per_task.push_back({{"label", tasks_[t]->label},
                          {"source", "patch"},
                          {"kept", r.task_kept[t]}});
    }
    if (stitched_) {
      nlohmann::json patch_stats = {{"kept", r.kept}, {"tasks", per_task}};
      out.patches.push_back(JournalPatch{"stitched", *std::move(r.stitched),
                                         std::move(patch_stats)});
    }
    out.fused_spool = std::move(spool);
    nlohmann::json entry = FusedReportEntry(info, r.kept, per_task);
    entry["seconds"] = Seconds(t0);
    out.report = std::move(entry);
    return out;
  }

  // Computes fused tensor `index` of the plan: everything it contributes to
  // the outputs and the report, without touching them (ApplyFused does).
  absl::StatusOr<JournalEntry> FuseOne(size_t index, const TensorInfo& info,
                                       const at::Device& device) {
    const auto t0 = Clock::now();
    const std::string& name = info.name;
    JournalEntry out;
    out.index = static_cast<int64_t>(index);
    out.name = name;
    TAILOR_ASSIGN_OR_RETURN(at::Tensor pre,
                            base_->Read(name, ComputeRead(device)));
    TAILOR_RETURN_IF_ERROR(CheckFiniteTensor(pre, name, "pre-trained tensor"));
    std::vector<TaskDelta> deltas;
    std::vector<at::Tensor> dense;
    nlohmann::json per_task = nlohmann::json::array();
    for (size_t t = 0; t < tasks_.size(); ++t) {
      Task* task = tasks_[t].get();
      nlohmann::json tj = {{"label", task->label}};
      if (task->patch) {
        if (task->patch->Find(name) != nullptr) {
          TAILOR_ASSIGN_OR_RETURN(TaskDelta d, task->patch->Load(name));
          TAILOR_ASSIGN_OR_RETURN(d, CatchTorch(name, [&] {
                                    return TaskDelta{
                                        d.mask.to(device),
                                        d.delta.to(device, pre.scalar_type())};
                                  }));
          deltas.push_back(std::move(d));
        } else {
          TAILOR_ASSIGN_OR_RETURN(
              TaskDelta d, CatchTorch(name, [&] {
                return TaskDelta{
                    at::zeros(pre.sizes(), pre.options().dtype(at::kBool)),
                    at::zeros_like(pre)};
              }));
          deltas.push_back(std::move(d));
        }
        tj["source"] = "patch";
        tj["kept"] = deltas.back().mask.sum().item<int64_t>();
        per_task.push_back(tj);
        continue;
      }
      TAILOR_ASSIGN_OR_RETURN(at::Tensor ft,
                              task->finetuned->Read(name, ComputeRead(device)));
      if (spec_.method == Method::kTailor ||
          spec_.method == Method::kMagnitude) {
        // One prepared Hessian per (task, key), shared by its aliases.
        PreparedHessianCache::Entry h;
        if (task->calibration && info.shape.size() == 2 &&
            spec_.method == Method::kTailor) {
          if (std::optional<std::string> key =
                  task->calibration->KeyFor(name)) {
            const CalibrationFile* calib = task->calibration.get();
            TAILOR_ASSIGN_OR_RETURN(
                h, hessians_.Acquire(
                       static_cast<int>(t), *key, device,
                       [&] { return calib->Load(*key); }, task->options));
          }
        }
        TAILOR_ASSIGN_OR_RETURN(
            LayerResult r,
            TailorLayerPrepared(name, pre, ft, h.get(), task->options));
        const LayerStats& s = r.stats;
        tj["kept"] = s.kept;
        tj["kept_fraction"] =
            s.count ? static_cast<double>(s.kept) / s.count : 0.0;
        tj["hessian"] = s.has_hessian;
        tj["compensation"] = s.compensation;
        if (!s.fallback_reason.empty()) {
          tj["fallback_reason"] = s.fallback_reason;
          out.warnings.push_back(
              absl::StrCat(name, " (task '", task->label,
                           "'): compensation skipped: ", s.fallback_reason));
        }
        if (s.has_hessian) {
          tj["damp"] = s.damp;
          tj["dead_columns"] = s.dead_columns;
          tj["error_mask_only"] = NumberOrNull(s.error_mask_only);
          tj["error_compensated"] = NumberOrNull(s.error_compensated);
          if (s.error_mask_only_estimated) {
            tj["error_mask_only_estimated"] = true;
          }
          if (s.error_compensated_estimated) {
            tj["error_compensated_estimated"] = true;
          }
          out.errors.emplace_back(
              std::isfinite(s.error_mask_only) ? s.error_mask_only : 0,
              std::isfinite(s.error_compensated) ? s.error_compensated : 0);
        }
        if (task->patch_writer) {
          TAILOR_ASSIGN_OR_RETURN(
              PackedPatchEntry packed,
              PatchWriter::Pack(r.mask, r.delta,
                                absl::StrCat("patch of task '", task->label,
                                             "': tensor '", name, "'")));
          out.patches.push_back(
              JournalPatch{absl::StrCat("task", t), std::move(packed), tj});
        }
        // Timings go to the report only: patches stay byte-deterministic.
        tj["seconds"] = s.seconds;
        deltas.push_back(TaskDelta{r.mask, r.delta});
      } else {
        TAILOR_RETURN_IF_ERROR(
            CheckFiniteTensor(ft, name, "fine-tuned tensor"));
        TAILOR_ASSIGN_OR_RETURN(at::Tensor d,
                                CatchTorch(name, [&] { return ft - pre; }));
        dense.push_back(std::move(d));
      }
      per_task.push_back(tj);
    }
    hessians_.Finished(static_cast<int64_t>(index));
    TAILOR_ASSIGN_OR_RETURN(
        MergedDelta merged, CatchTorch(name, [&]() -> MergedDelta {
          switch (spec_.method) {
            case Method::kTailor:
            case Method::kMagnitude:
              if (deltas.size() == 1)
                return MergedDelta{deltas[0].mask, deltas[0].delta};
              return Stitch(deltas, spec_.aggregation);
            case Method::kTaskArithmetic:
              return TaskArithmetic(dense, spec_.lambda);
            case Method::kTies:
              return Ties(dense, spec_.density, spec_.lambda);
            case Method::kDare:
              return Dare(dense, spec_.drop, spec_.lambda, spec_.seed, name);
            case Method::kSpider:
              return Spider(pre, dense[0], at::Tensor());
          }
          return MergedDelta{};
        }));
    const int64_t kept = merged.mask.sum().item<int64_t>();
    nlohmann::json entry = FusedReportEntry(info, kept, per_task);
    if (writer_) {
      TAILOR_ASSIGN_OR_RETURN(at::Tensor fused, CatchTorch(name, [&] {
                                return FuseTensor(
                                    pre, merged.mask,
                                    KeptValues(merged.mask, merged.delta));
                              }));
      const std::string label = absl::StrCat("output tensor '", name, "'");
      TAILOR_ASSIGN_OR_RETURN(at::Tensor stored,
                              ToStoredTensor(fused, info.dtype, label));
      out.fused.emplace(
          static_cast<const char*>(stored.data_ptr()),
          static_cast<size_t>(stored.numel()) * stored.element_size());
    }
    if (stitched_) {
      nlohmann::json patch_stats = {{"kept", kept}, {"tasks", per_task}};
      for (auto& t : patch_stats["tasks"]) t.erase("seconds");
      TAILOR_ASSIGN_OR_RETURN(
          PackedPatchEntry packed,
          PatchWriter::Pack(
              merged.mask, merged.delta,
              absl::StrCat("patch ", patch_path_, ": tensor '", name, "'")));
      out.patches.push_back(
          JournalPatch{"stitched", std::move(packed), std::move(patch_stats)});
    }
    entry["seconds"] = Seconds(t0);
    out.report = std::move(entry);
    return out;
  }

  // Feeds a fused tensor's recorded work -- computed now or read back from
  // the journal -- to the writers, the report and the totals, in the same
  // order either way. Returns the tensor's report entry.
  absl::StatusOr<nlohmann::json> ApplyFused(const TensorInfo& info,
                                            const JournalEntry& e,
                                            bool written) {
    {
      // Emitted as events when the tensor completed (ComputeItem).
      absl::MutexLock lock(&mu_);
      for (const std::string& w : e.warnings) warnings_.push_back(w);
    }
    for (const auto& [mask_only, compensated] : e.errors) {
      error_mask_only_ += mask_only;
      error_compensated_ += compensated;
    }
    for (const nlohmann::json& t : e.report.value("tasks", nlohmann::json())) {
      if (t.value("error_mask_only_estimated", false)) {
        error_mask_only_estimated_ = true;
      }
      if (t.value("error_compensated_estimated", false)) {
        error_compensated_estimated_ = true;
      }
    }
    for (size_t t = 0; t < tasks_.size(); ++t) {
      if (!tasks_[t]->patch_writer) continue;
      const JournalPatch* p = e.FindPatch(absl::StrCat("task", t));
      TAILOR_RETURN_IF_ERROR(tasks_[t]->patch_writer->AddPacked(
          info.name, p->packed, info.dtype, p->stats));
    }
    if (writer_ && !written && e.fused) {
      TAILOR_RETURN_IF_ERROR(writer_->WriteRaw(info.name, *e.fused));
    } else if (writer_ && !written) {
      // Resumed from a sidecar (a streamed tensor): copied in pieces.
      TAILOR_ASSIGN_OR_RETURN(CheckpointWriter::TensorStream stream,
                              writer_->BeginTensor(info.name));
      TAILOR_RETURN_IF_ERROR(
          journal_->CopyFused(e, [&](absl::string_view bytes) {
            return writer_->WriteChunk(&stream, bytes);
          }));
      TAILOR_RETURN_IF_ERROR(writer_->EndTensor(&stream));
    }
    if (stitched_) {
      const JournalPatch* p = e.FindPatch("stitched");
      TAILOR_RETURN_IF_ERROR(
          stitched_->AddPacked(info.name, p->packed, info.dtype, p->stats));
    }
    total_count_ += info.numel;
    total_kept_ += e.report.value("kept", int64_t{0});
    ++fused_tensors_;
    return e.report;
  }

  absl::StatusOr<nlohmann::json> CopyOne(const TensorInfo& info,
                                         const std::string& why) {
    if (writer_) {
      TAILOR_ASSIGN_OR_RETURN(std::string bytes, base_->ReadRaw(info.name));
      TAILOR_RETURN_IF_ERROR(writer_->WriteRaw(info.name, bytes));
    }
    return nlohmann::json{{"name", info.name},
                          {"action", "copied"},
                          {"reason", why},
                          {"shape", info.shape},
                          {"dtype", std::string(DTypeName(info.dtype))},
                          {"count", info.numel}};
  }

  std::string DevicesUsed() const {
    absl::MutexLock lock(&mu_);
    return absl::StrJoin(devices_used_, ",");
  }

  nlohmann::json Knobs() const {
    nlohmann::json knobs = spec_.ToJson();
    for (const char* k : {"pretrained", "tasks", "out", "patch_out", "report",
                          "device", "threads"}) {
      knobs.erase(k);
    }
    return knobs;
  }

  // Stages every output completely (written, fsynced), then publishes them
  // as one unit (PublishAll: all or nothing, see staged_output.h).
  absl::Status Publish() {
    std::vector<StagedOutput*> staged;
    PatchMetadata metadata;
    metadata.method = std::string(MethodName(spec_.method));
    metadata.knobs = Knobs();
    metadata.sources = sources_;
    for (auto& task : tasks_) {
      if (!task->patch_writer) continue;
      PatchMetadata m = metadata;
      m.knobs["keep"] = task->options.keep_ratio;
      m.knobs["omega"] = task->options.omega;
      m.knobs["task"] = task->label;
      TAILOR_RETURN_IF_ERROR(task->patch_writer->Stage(m));
      staged.push_back(task->patch_writer->staged());
    }
    if (stitched_) {
      TAILOR_RETURN_IF_ERROR(stitched_->Stage(metadata));
      staged.push_back(stitched_->staged());
    }
    if (writer_) {
      TAILOR_RETURN_IF_ERROR(writer_->Stage());
      staged.push_back(writer_->staged());
    }

    report_["method"] = metadata.method;
    report_["spec"] = spec_.ToJson();
    report_["sources"] = sources_;
    report_["tensors"] = tensors_;
    absl::MutexLock lock(&mu_);  // the workers are done; for the analysis
    report_["warnings"] = warnings_;
    nlohmann::json outputs = nlohmann::json::object();
    if (writer_) outputs["fused"] = spec_.output_uri;
    if (stitched_) {
      outputs["patch"] = patch_path_;
      // Pinned: ReadJobResult serves these bytes only (issue #10 point 4).
      outputs["patch_bytes"] = stitched_->size();
      outputs["patch_sha256"] = stitched_->sha256();
    }
    nlohmann::json task_patches = nlohmann::json::object();
    for (auto& task : tasks_) {
      if (task->patch_writer) task_patches[task->label] = task->patch_out;
    }
    if (!task_patches.empty()) outputs["task_patches"] = task_patches;
    report_["outputs"] = outputs;
    const double reduction = error_mask_only_ > 0
                                 ? 1.0 - error_compensated_ / error_mask_only_
                                 : std::numeric_limits<double>::quiet_NaN();
    report_["totals"] = {
        {"tensors_fused", fused_tensors_},
        {"tensors_copied", copied_tensors_},
        {"entries", total_count_},
        {"kept", total_kept_},
        {"kept_fraction",
         total_count_ ? static_cast<double>(total_kept_) / total_count_ : 0.0},
        {"error_mask_only", error_mask_only_},
        {"error_mask_only_estimated", error_mask_only_estimated_},
        {"error_compensated", error_compensated_},
        {"error_compensated_estimated", error_compensated_estimated_},
        {"error_reduction", NumberOrNull(reduction)},
        {"resumed_tensors", resumed_tensors_},
        {"device", options_.device_scheduler == nullptr
                       ? job_device_.str()
                       : absl::StrJoin(devices_used_, ",")},
        {"seconds", Seconds(start_)}};
    if (report_out_) {
      const std::string text = report_.dump(2) + "\n";
      TAILOR_RETURN_IF_ERROR(PWriteFully(report_out_->fd(), text.data(),
                                         text.size(), 0,
                                         report_out_->staging_path()));
      staged.push_back(report_out_.get());
    }
    return PublishAll(staged);
  }

  const FusionSpec& spec_;
  const UriResolver& resolver_;
  const RunOptions& options_;
  Clock::time_point start_;
  // Without a scheduler, the device of every fused tensor (set before the
  // workers start); with one each tensor's lease names its own.
  at::Device job_device_ = at::kCPU;
  std::unique_ptr<Checkpoint> base_;
  std::vector<std::unique_ptr<Task>> tasks_;
  std::vector<WorkItem> plan_;
  std::unique_ptr<CheckpointWriter> writer_;
  std::unique_ptr<PatchWriter> stitched_;
  std::unique_ptr<StagedOutput> report_out_;
  // Set by OpenJournal before the workers start, never reset after.
  std::unique_ptr<FusionJournal> journal_;
  absl::Mutex journal_mu_;  // serialises journal_->Write
  // A write failed: the job goes on without the journal.
  bool journal_failed_ ABSL_GUARDED_BY(journal_mu_) = false;
  std::vector<ItemResult> results_;  // by plan index, see ItemResult
  std::string patch_path_, report_path_;
  nlohmann::json sources_ = nlohmann::json::array();
  nlohmann::json report_;
  // Guards what workers, the committer and progress events share: the
  // progress counters, the report's warnings (one per tensor, appended in
  // plan order by the committer), the devices used and resumed tensors.
  // The events themselves are emitted under it, one at a time.
  mutable absl::Mutex mu_;
  std::vector<std::string> warnings_ ABSL_GUARDED_BY(mu_);
  int64_t done_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t bytes_done_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t bytes_total_ = 0;  // set by Plan, before the workers
  std::set<std::string> devices_used_ ABSL_GUARDED_BY(mu_);  // lease names
  int64_t resumed_tensors_ ABSL_GUARDED_BY(mu_) = 0;
  // The committer's alone (CommitItem, ApplyFused, then Publish): the
  // report rows and the totals.
  nlohmann::json tensors_ = nlohmann::json::array();
  int64_t fused_tensors_ = 0, copied_tensors_ = 0;
  int64_t total_count_ = 0, total_kept_ = 0;
  double error_mask_only_ = 0, error_compensated_ = 0;
  // Whether any summand of the totals above is a sampled estimate.
  bool error_mask_only_estimated_ = false, error_compensated_estimated_ = false;
  // Thread-safe; prepares each Hessian once however many workers ask.
  PreparedHessianCache hessians_;
};

}  // namespace

absl::StatusOr<nlohmann::json> RunFusionJob(const FusionSpec& spec,
                                            const UriResolver& resolver,
                                            const RunOptions& options) {
  Job job(spec, resolver, options);
  return CatchTorch("fusion job", [&] { return job.Run(); });
}

absl::Status ApplyPatch(const std::string& pretrained_uri,
                        const std::string& patch_uri,
                        const std::string& output_uri, bool overwrite,
                        const UriResolver& resolver,
                        int64_t stream_chunk_elements) {
  ConfigureAllocatorForStreaming();
  return CatchTorch("apply-patch", [&]() -> absl::Status {
    TAILOR_ASSIGN_OR_RETURN(std::unique_ptr<Checkpoint> base,
                            OpenCheckpointUri(pretrained_uri, resolver));
    TAILOR_ASSIGN_OR_RETURN(std::string patch_path,
                            resolver.ResolveExisting(patch_uri));
    Checkpoint::Options open;
    open.resolver = &resolver;
    TAILOR_ASSIGN_OR_RETURN(std::unique_ptr<PatchFile> patch,
                            PatchFile::Open(patch_path, open));
    // The patch records the base it was made for.
    TAILOR_ASSIGN_OR_RETURN(nlohmann::json base_fp, Fingerprints(*base));
    for (const auto& source : patch->sources()) {
      if (source.value("role", "") == "pretrained" &&
          source.contains("files") && source["files"] != base_fp) {
        return absl::FailedPreconditionError(absl::StrCat(
            patch_path, " was made for a different pre-trained checkpoint (",
            source.value("uri", "?"), "): its header fingerprints differ from ",
            pretrained_uri));
      }
    }
    // ... and samples of its values (patches written before data_samples
    // existed are checked by header only).
    TAILOR_ASSIGN_OR_RETURN(nlohmann::json base_data, DataFingerprints(*base));
    for (const auto& source : patch->sources()) {
      if (source.value("role", "") == "pretrained" &&
          source.contains("data_samples") &&
          source["data_samples"] != base_data) {
        const auto uri = source.find("uri");
        return absl::FailedPreconditionError(absl::StrCat(
            patch_path, " was made for a different pre-trained checkpoint (",
            uri != source.end() && uri->is_string()
                ? Quote(uri->get<std::string>())
                : "?",
            "): the layout matches but sampled tensor data differ from ",
            pretrained_uri));
      }
    }
    for (const PatchFile::TensorEntry& e : patch->tensors()) {
      const TensorInfo* info = base->Find(e.name);
      if (info == nullptr) {
        return absl::InvalidArgumentError(
            absl::StrCat(patch_path, ": patches tensor '", e.name, "' which ",
                         pretrained_uri, " lacks"));
      }
      if (info->shape != e.shape || info->dtype != e.base_dtype) {
        return absl::InvalidArgumentError(absl::StrCat(
            patch_path, ": tensor '", e.name, "' is ", DTypeName(e.base_dtype),
            " ", c10::str(at::IntArrayRef(e.shape)), " in the patch but ",
            DTypeName(info->dtype), " ", c10::str(at::IntArrayRef(info->shape)),
            " in the base"));
      }
    }
    // The output may not overlap the inputs, a root or a protected path.
    OutputPlan plan;
    TAILOR_ASSIGN_OR_RETURN(std::string out,
                            resolver.ResolveForWrite(output_uri));
    plan.outputs.push_back({"out", out, true});
    TAILOR_ASSIGN_OR_RETURN(std::string base_path,
                            resolver.ResolveExisting(pretrained_uri));
    plan.inputs.push_back({"pretrained", base_path, IsDirectory(base_path)});
    plan.inputs.push_back({"patch", CanonicalOr(patch_path), false});
    AddInputFiles(*base, "pretrained", &plan);
    TAILOR_RETURN_IF_ERROR(CheckOutputPlan(plan, resolver));
    CleanStaleStaging(plan);
    CheckpointWriterOptions options;
    options.preserve_file_assignment = true;
    options.overwrite = overwrite;
    options.copy_files_from = base->directory();
    TAILOR_ASSIGN_OR_RETURN(
        std::unique_ptr<CheckpointWriter> writer,
        CheckpointWriter::Create(out, base->tensors(), options));
    for (const TensorInfo& info : base->tensors()) {
      if (patch->Find(info.name) == nullptr) {
        if (stream_chunk_elements > 0 && info.nbytes > 0) {
          // Pieces as large as a chunk of float32 elements.
          TAILOR_RETURN_IF_ERROR(StreamCopiedTensor(
              *base, info, static_cast<uint64_t>(stream_chunk_elements) * 4,
              writer.get()));
          continue;
        }
        TAILOR_ASSIGN_OR_RETURN(std::string bytes, base->ReadRaw(info.name));
        TAILOR_RETURN_IF_ERROR(writer->WriteRaw(info.name, bytes));
        continue;
      }
      if (stream_chunk_elements > 0 && info.numel > 0 &&
          ToScalarType(info.dtype).has_value()) {
        TAILOR_RETURN_IF_ERROR(StreamPatchedTensor(
            *base, info, *patch, stream_chunk_elements, writer.get()));
        continue;
      }
      TAILOR_ASSIGN_OR_RETURN(at::Tensor pre, base->Read(info.name));
      TAILOR_ASSIGN_OR_RETURN(auto packed, patch->LoadPacked(info.name));
      TAILOR_RETURN_IF_ERROR(writer->Write(
          info.name, FuseTensor(pre, packed.first, packed.second)));
    }
    return writer->Commit();
  });
}

}  // namespace tailor
