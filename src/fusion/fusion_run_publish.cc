// FusionRun's committing and publishing (fusion_run.h): feeds each tensor's
// result (computed or resumed) to the writers, the report rows and the
// totals in plan order; copies unfused tensors; then stages every output
// completely and publishes them as one unit (patches, fused checkpoint,
// report: all or nothing, staged_output.h).

#include <limits>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "fusion/fusion_run.h"
#include "util/file_util.h"
#include "util/status_macros.h"

namespace tailor {
namespace fusion_internal {

absl::StatusOr<nlohmann::json> FusionRun::ApplyFused(const TensorInfo& info,
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
    const FusionJournal& from = SourceJournal(e.index);
    TAILOR_RETURN_IF_ERROR(from.CopyFused(e, [&](absl::string_view bytes) {
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

absl::StatusOr<nlohmann::json> FusionRun::CopyOne(const TensorInfo& info,
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

nlohmann::json FusionRun::Knobs() const {
  nlohmann::json knobs = spec_.ToJson();
  for (const char* k : {"pretrained", "tasks", "out", "patch_out", "report",
                        "device", "threads"}) {
    knobs.erase(k);
  }
  return knobs;
}

nlohmann::json FusionRun::PatchSources() const {
  nlohmann::json sources = sources_;
  for (nlohmann::json& source : sources) source.erase("uri");
  return sources;
}

absl::Status FusionRun::Publish() {
  std::vector<StagedOutput*> staged;
  PatchMetadata metadata;
  metadata.method = std::string(MethodName(spec_.method));
  metadata.knobs = Knobs();
  metadata.sources = PatchSources();
  for (auto& task : tasks_) {
    if (!task->patch_writer) continue;
    PatchMetadata m = metadata;
    // A task without its own keep/omega records the job's list over the
    // layers, if it has one (magnitude's omega is always 1).
    const LayerGradients& g = spec_.gradients;
    m.knobs["keep"] = task->spec->keep_ratio || g.keep.empty()
                          ? nlohmann::json(task->options.keep_ratio)
                          : nlohmann::json(g.keep);
    m.knobs["omega"] = task->spec->omega || g.omega.empty() ||
                               spec_.method == Method::kMagnitude
                           ? nlohmann::json(task->options.omega)
                           : nlohmann::json(g.omega);
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
  report_["sources"] = sources_;  // with the URIs the patches leave out
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
      {"seconds", start_.Seconds()}};
  if (report_out_) {
    const std::string text = report_.dump(2) + "\n";
    TAILOR_RETURN_IF_ERROR(PWriteFully(report_out_->fd(), text.data(),
                                       text.size(), 0,
                                       report_out_->staging_path()));
    staged.push_back(report_out_.get());
  }
  // A cancel or drain during the uploads stops them (nothing visible).
  return PublishAll(staged, options_.cancel);
}

}  // namespace fusion_internal
}  // namespace tailor
