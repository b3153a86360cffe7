// FusionRun::FuseOne (fusion_run.h): computes one fused tensor whole on its
// device -- each task's mask and delta (Model Tailor with its prepared
// Hessian, magnitude, or a dense delta), the merge, the fused stored bytes
// and the packed patch entries -- without touching the outputs; and its
// working-memory estimate (working_memory.h).

#include <cmath>
#include <utility>

#include "absl/strings/str_cat.h"
#include "fusion/fusion_run.h"
#include "fusion/merge_methods.h"
#include "fusion/mergekit_methods.h"
#include "fusion/tailor_kernel.h"
#include "fusion/working_memory.h"
#include "io/tensor_convert.h"
#include "util/status_macros.h"
#include "util/torch_status.h"

namespace tailor {
namespace fusion_internal {

JournalEntry FusionRun::NewEntry(size_t index, const TensorInfo& info) {
  JournalEntry out;
  out.index = static_cast<int64_t>(index);
  out.name = info.name;
  return out;
}

bool FusionRun::StreamsOnHost(const TensorInfo& info) const {
  return options_.device_scheduler == nullptr && job_device_.is_cpu() &&
         !StitchesPatches() && Streams(info, job_device_);
}

int64_t FusionRun::EstimateWorkingBytes(const TensorInfo& info) const {
  if (StreamsOnHost(info)) {
    return EstimateStreamedWorkingBytes(spec_, info,
                                        static_cast<int64_t>(tasks_.size()),
                                        options_.stream_chunk_elements);
  }
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

ReadOptions FusionRun::ComputeRead(const at::Device& device) const {
  ReadOptions r;
  r.floating_dtype = spec_.tailor.float64 ? at::kDouble : at::kFloat;
  r.device = device;
  return r;
}

absl::StatusOr<JournalEntry> FusionRun::FuseOne(size_t index,
                                                const TensorInfo& info,
                                                const at::Device& device) {
  const Stopwatch t0;
  const std::string& name = info.name;
  // The spec of this tensor's layer (per-layer values; fusion_run_layers.cc).
  const FusionSpec& spec = SpecAt(index);
  JournalEntry out = NewEntry(index, info);
  TAILOR_ASSIGN_OR_RETURN(at::Tensor pre,
                          base_->Read(name, ComputeRead(device)));
  TAILOR_RETURN_IF_ERROR(CheckFiniteTensor(pre, name, "pre-trained tensor"));
  std::vector<TaskDelta> deltas;
  std::vector<at::Tensor> dense;
  nlohmann::json per_task = nlohmann::json::array();
  for (size_t t = 0; t < tasks_.size(); ++t) {
    Task* task = tasks_[t].get();
    const TailorOptions& options = OptionsAt(index, t);
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
    if (spec_.method == Method::kTailor || spec_.method == Method::kMagnitude) {
      // One prepared Hessian per (task, key), shared by its aliases.
      PreparedHessianCache::Entry h;
      if (task->calibration && info.shape.size() == 2 &&
          spec_.method == Method::kTailor) {
        if (std::optional<std::string> key = task->calibration->KeyFor(name)) {
          const CalibrationFile* calib = task->calibration.get();
          TAILOR_ASSIGN_OR_RETURN(
              h, hessians_.Acquire(
                     static_cast<int>(t), *key, device,
                     [&] { return calib->Load(*key); }, options));
        }
      }
      TAILOR_ASSIGN_OR_RETURN(
          LayerResult r, TailorLayerPrepared(name, pre, ft, h.get(), options));
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
        if (s.dead_columns > 0 &&
            options.dead_columns == DeadColumns::kRevert) {
          tj["dead_entries_reverted"] = s.dead_entries_reverted;
        }
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
      TAILOR_RETURN_IF_ERROR(CheckFiniteTensor(ft, name, "fine-tuned tensor"));
      TAILOR_ASSIGN_OR_RETURN(at::Tensor d,
                              CatchTorch(name, [&] { return ft - pre; }));
      dense.push_back(std::move(d));
    }
    per_task.push_back(tj);
  }
  hessians_.Finished(static_cast<int64_t>(index));
  TAILOR_ASSIGN_OR_RETURN(
      MergedDelta merged, CatchTorch(name, [&]() -> MergedDelta {
        if (UsesMergekitPath(spec)) {  // the mergekit family, weighted TA/TIES
          return MergekitMerge(MergekitParamsOf(spec), pre, dense, name);
        }
        switch (spec.method) {
          case Method::kTailor:
          case Method::kMagnitude:
            if (deltas.size() == 1)
              return MergedDelta{deltas[0].mask, deltas[0].delta};
            return Stitch(deltas, spec.aggregation);
          case Method::kTaskArithmetic:
            return TaskArithmetic(dense, spec.lambda);
          case Method::kTies:
            return Ties(dense, spec.density, spec.lambda);
          case Method::kDare:
            return Dare(dense, spec.drop, spec.lambda, spec.seed, name);
          case Method::kSpider:
            return Spider(pre, dense[0], at::Tensor());
          default:
            break;  // the mergekit family (IsMergekitMethod): above
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
  entry["seconds"] = t0.Seconds();
  out.report = std::move(entry);
  return out;
}

}  // namespace fusion_internal
}  // namespace tailor
