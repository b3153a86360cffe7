// FusionRun's planning (fusion_run.h): opens every input and records its
// fingerprints as the report's sources; plans each base tensor as fused or
// copied (filters, dtype, the mismatch policy; a task tensor the base lacks
// is an error or a warning, never dropped silently); checks the output plan
// (output_plan.h) against every file the inputs really read; creates the
// writers at the planned paths.

#include <algorithm>
#include <utility>

#include "absl/strings/str_cat.h"
#include "fusion/fusion_run.h"
#include "fusion/output_plan.h"
#include "io/lora_adapter.h"
#include "io/open_checkpoint.h"
#include "util/quote.h"
#include "util/sha256.h"
#include "util/status_macros.h"

namespace tailor {
namespace fusion_internal {

namespace {

// `path` as published: the writer canonicalised its parent again at
// Create(); a difference means the location changed since it was resolved.
absl::Status SameLocation(const std::string& field, const std::string& resolved,
                          const std::string& opened) {
  if (resolved == opened) return absl::OkStatus();
  return absl::FailedPreconditionError(absl::StrCat(
      field, ": the output location changed while the job started (resolved ",
      resolved, ", now ", opened, "); refusing to write there"));
}

}  // namespace

absl::Status FusionRun::OpenInputs() {
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
  // A task's patch or calibration file, opened at `path` (resolved from
  // `uri`): recorded in sources_ with its header fingerprint.
  auto record_file = [&](const char* role, const std::string& label,
                         const std::string& uri,
                         const std::string& path) -> absl::Status {
    TAILOR_ASSIGN_OR_RETURN(std::string sha,
                            HeaderFingerprint(path, resolver_));
    sources_.push_back(
        {{"role", role}, {"label", label}, {"uri", uri}, {"sha256", sha}});
    return absl::OkStatus();
  };
  for (size_t i = 0; i < spec_.tasks.size(); ++i) {
    const TaskSpec& ts = spec_.tasks[i];
    auto task = std::make_unique<Task>();
    task->spec = &ts;
    task->label = ts.label.empty() ? absl::StrCat("task", i) : ts.label;
    task->options = TaskTailorOptions(spec_, ts);
    if (!ts.patch_uri.empty()) {
      TAILOR_ASSIGN_OR_RETURN(std::string path,
                              resolver_.ResolveExisting(ts.patch_uri));
      TAILOR_ASSIGN_OR_RETURN(task->patch, PatchFile::Open(path, open));
      TAILOR_RETURN_IF_ERROR(
          record_file("patch", task->label, ts.patch_uri, path));
    } else {
      TAILOR_ASSIGN_OR_RETURN(
          task->finetuned,
          OpenFineTunedUri(ts.finetuned_uri, *base_, resolver_));
      nlohmann::json fp;
      if (auto* ckpt = dynamic_cast<const Checkpoint*>(task->finetuned.get())) {
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
      TAILOR_RETURN_IF_ERROR(
          record_file("hessians", task->label, ts.hessian_uri, path));
    }
    tasks_.push_back(std::move(task));
  }
  return absl::OkStatus();
}

std::string FusionRun::Mismatch(const Task& task,
                                const TensorInfo& info) const {
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
                        c10::str(at::IntArrayRef(ft->shape)), ", the base as ",
                        DTypeName(info.dtype), " ",
                        c10::str(at::IntArrayRef(info.shape)));
  }
  return "";
}

void FusionRun::ExpectHessians() {
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

absl::Status FusionRun::Plan() {
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

std::vector<std::string> FusionRun::TaskTensorNames(const Task& task) {
  std::vector<std::string> names;
  if (task.patch) {
    for (const auto& e : task.patch->tensors()) names.push_back(e.name);
  } else {
    for (const auto& t : task.finetuned->tensors()) names.push_back(t.name);
  }
  return names;
}

absl::Status FusionRun::OpenOutputs() {
  if (options_.shard.role == ShardOptions::Role::kShard) {
    return OpenShardOutputs();
  }
  // The output plan (issue #10), checked again now that the inputs are
  // open, with every file they really read.
  TAILOR_ASSIGN_OR_RETURN(OutputPlan plan, ResolveOutputPlan(spec_, resolver_));
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
    options.copy_resolver = &resolver_;
    options.output_resolver = &resolver_;
    TAILOR_ASSIGN_OR_RETURN(
        writer_, CheckpointWriter::Create(out, base_->tensors(), options));
    TAILOR_RETURN_IF_ERROR(SameLocation("out", out, writer_->out_dir()));
  }
  if (!spec_.patch_uri.empty()) {
    patch_path_ = planned("patch_out");
    TAILOR_ASSIGN_OR_RETURN(
        stitched_,
        PatchWriter::Create(patch_path_, spec_.overwrite, &resolver_));
    TAILOR_RETURN_IF_ERROR(
        SameLocation("patch_out", patch_path_, stitched_->path()));
    if (WritesTaskPatches(spec_)) {
      for (size_t i = 0; i < tasks_.size(); ++i) {
        Task* task = tasks_[i].get();
        if (task->patch) continue;  // already a patch
        task->patch_out = TaskPatchPath(patch_path_, TaskLabel(spec_, i));
        TAILOR_ASSIGN_OR_RETURN(
            task->patch_writer,
            PatchWriter::Create(task->patch_out, spec_.overwrite, &resolver_));
        TAILOR_RETURN_IF_ERROR(SameLocation("patch_out", task->patch_out,
                                            task->patch_writer->path()));
      }
    }
  }
  if (!spec_.report_uri.empty()) {
    report_path_ = planned("report");
    TAILOR_ASSIGN_OR_RETURN(
        report_out_, CreateStagedOutput(report_path_, StagedOutput::Kind::kFile,
                                        spec_.overwrite, &resolver_));
    TAILOR_RETURN_IF_ERROR(
        SameLocation("report", report_path_, report_out_->path()));
  }
  return absl::OkStatus();
}

}  // namespace fusion_internal
}  // namespace tailor
