// FusionRun's streamed tensors (fusion_run.h): which fused tensors stream
// (Streams) and computing them in chunks of options.stream_chunk_elements,
// written straight to the fused checkpoint's writer and spooled to the
// journal: task arithmetic and DARE (StreamOne), magnitude, TIES and SPIDER
// (StreamThreshold, streamed_merge.h) and stitching task patches
// (StreamStitch, stitch_stream.h). The same bytes and report rows as
// FuseOne; working memory a few chunks, not the tensor.

#include <algorithm>
#include <utility>

#include "absl/strings/str_cat.h"
#include "fusion/delta_chunk_reader.h"
#include "fusion/dense_merge_kernel.h"
#include "fusion/fusion_run.h"
#include "fusion/merge_methods.h"
#include "fusion/mergekit_methods.h"
#include "fusion/stitch_stream.h"
#include "fusion/streamed_merge.h"
#include "io/tensor_convert.h"
#include "util/status_macros.h"
#include "util/torch_status.h"

namespace tailor {
namespace fusion_internal {

bool FusionRun::Streams(const TensorInfo& info,
                        const at::Device& device) const {
  if (options_.stream_chunk_elements <= 0) return false;
  if (StitchesPatches()) {
    // Every output (fused checkpoint, stitched patch) streams.
    return device.is_cpu() && info.numel > 0 &&
           ToScalarType(info.dtype).has_value();
  }
  // The mergekit family (mergekit_methods.h) streams its elementwise
  // methods only (StreamMergekit); the ranked ones are computed whole.
  const bool mergekit = UsesMergekitPath(spec_);
  if (mergekit && !MergekitStreams(spec_)) return false;
  const bool threshold = !mergekit && (spec_.method == Method::kMagnitude ||
                                       spec_.method == Method::kTies ||
                                       spec_.method == Method::kSpider);
  if (spec_.method != Method::kTaskArithmetic &&
      spec_.method != Method::kDare && !threshold && !mergekit) {
    return false;
  }
  if (!writer_ || stitched_ || !device.is_cpu() || info.numel == 0 ||
      !ToScalarType(info.dtype).has_value()) {
    return false;
  }
  if ((threshold || mergekit) &&
      !at::isFloatingType(*ToScalarType(info.dtype))) {
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
          !(o.scope == Scope::kLayer || (o.scope == Scope::kRow && one_row))) {
        return false;
      }
    }
  }
  return true;
}

StreamedTensor FusionRun::StreamedTensorOf(const TensorInfo& info) const {
  StreamedTensor t;
  t.name = info.name;
  t.stored = *ToScalarType(info.dtype);
  t.numel = info.numel;
  t.element_size = info.nbytes / static_cast<uint64_t>(info.numel);
  t.chunk = std::clamp<int64_t>(options_.stream_chunk_elements, 1, t.numel);
  t.base = base_.get();
  t.float64 = spec_.tailor.float64;
  for (const auto& task : tasks_) {
    t.finetuned.push_back(
        dynamic_cast<const Checkpoint*>(task->finetuned.get()));
  }
  return t;
}

absl::Status FusionRun::WriteStreamed(size_t index, const TensorInfo& info,
                                      absl::string_view bytes,
                                      StreamedOutput* output) {
  if (!output->stream) {
    TAILOR_ASSIGN_OR_RETURN(output->stream, writer_->BeginTensor(info.name));
    output->spool = BeginSpool(index, info);
  }
  TAILOR_RETURN_IF_ERROR(writer_->WriteChunk(&*output->stream, bytes));
  Spool(output->spool, bytes);
  return absl::OkStatus();
}

absl::Status FusionRun::FinishStreamed(size_t index, const TensorInfo& info,
                                       int64_t kept,
                                       const nlohmann::json& per_task,
                                       const Stopwatch& t0,
                                       StreamedOutput* output,
                                       JournalEntry* entry) {
  if (output->stream) {
    TAILOR_RETURN_IF_ERROR(writer_->EndTensor(&*output->stream));
  }
  hessians_.Finished(static_cast<int64_t>(index));
  entry->fused_spool = std::move(output->spool);
  nlohmann::json row = FusedReportEntry(info, kept, per_task);
  row["seconds"] = t0.Seconds();
  entry->report = std::move(row);
  return absl::OkStatus();
}

nlohmann::json FusionRun::TaskLabels() const {
  nlohmann::json rows = nlohmann::json::array();
  for (const auto& task : tasks_) rows.push_back({{"label", task->label}});
  return rows;
}

absl::StatusOr<JournalEntry> FusionRun::StreamThreshold(
    size_t index, const TensorInfo& info) {
  const Stopwatch t0;
  const StreamedTensor t = StreamedTensorOf(info);
  const FusionSpec& spec = SpecAt(index);  // this tensor's layer's
  StreamedMergeOptions o;
  o.method = spec_.method == Method::kMagnitude ? StreamedMethod::kMagnitude
             : spec_.method == Method::kTies    ? StreamedMethod::kTies
                                                : StreamedMethod::kSpider;
  o.aggregation = spec_.aggregation;
  o.density = spec.density;
  o.lambda = spec.lambda;
  for (size_t i = 0; i < tasks_.size(); ++i) {
    o.keep_ratio.push_back(OptionsAt(index, i).keep_ratio);
  }
  // The streamed bytes go to the journal chunk by chunk (BeginSpool). The
  // tensor is begun at its first chunk: a bad input is refused before.
  StreamedOutput output;
  auto write = [&](absl::string_view bytes) {
    return WriteStreamed(index, info, bytes, &output);
  };
  TAILOR_ASSIGN_OR_RETURN(StreamedMergeResult r, CatchTorch(info.name, [&] {
                            return StreamThresholdMerge(t, o, write);
                          }));
  JournalEntry out = NewEntry(index, info);
  nlohmann::json per_task = TaskLabels();
  for (size_t i = 0; i < tasks_.size(); ++i) {
    nlohmann::json& tj = per_task[i];
    if (spec_.method == Method::kMagnitude) {
      // TailorLayerPrepared's stats without a Hessian.
      const int64_t kept = r.task_kept[i];
      tj["kept"] = kept;
      tj["kept_fraction"] = static_cast<double>(kept) / info.numel;
      tj["hessian"] = false;
      tj["compensation"] = "none";
      if (r.task_nonfinite_kept[i]) {
        // As TailorLayerPrepared reports a masked delta that overflowed.
        const std::string reason = "compensation produced non-finite values";
        tj["fallback_reason"] = reason;
        out.warnings.push_back(
            absl::StrCat(info.name, " (task '", tasks_[i]->label,
                         "'): compensation skipped: ", reason));
      }
      tj["seconds"] = t0.Seconds();
    }
  }
  TAILOR_RETURN_IF_ERROR(
      FinishStreamed(index, info, r.kept, per_task, t0, &output, &out));
  return out;
}

absl::StatusOr<JournalEntry> FusionRun::StreamOne(size_t index,
                                                  const TensorInfo& info) {
  if (StitchesPatches()) return StreamStitch(index, info);
  if (UsesMergekitPath(spec_)) return StreamMergekit(index, info);
  if (spec_.method != Method::kTaskArithmetic &&
      spec_.method != Method::kDare) {
    return StreamThreshold(index, info);
  }
  const Stopwatch t0;
  const std::string& name = info.name;
  JournalEntry out = NewEntry(index, info);
  const StreamedTensor t = StreamedTensorOf(info);
  const std::vector<const Checkpoint*>& fts = t.finetuned;
  const int64_t n = t.numel;
  StreamedOutput output;
  int64_t kept = 0;
  TAILOR_RETURN_IF_ERROR(CatchTorch(name, [&]() -> absl::Status {
    // Reused for every chunk: the reader's (raw input, pre-trained, one
    // delta per task), the mask, float32 views of pre and delta (float64
    // compute), the fused chunk and its stored form.
    DeltaChunkReader in(t);
    const at::ScalarType stored = t.stored;
    const at::ScalarType compute = in.compute();
    at::Tensor mask_buf = in.Buffer(at::kBool);
    at::Tensor pre_f_buf, delta_f_buf;
    if (compute != at::kFloat) {
      pre_f_buf = in.Buffer(at::kFloat);
      delta_f_buf = in.Buffer(at::kFloat);
    }
    at::Tensor fused_buf = in.Buffer(at::kFloat);
    at::Tensor out_buf = stored == at::kFloat ? fused_buf : in.Buffer(stored);
    // The scale of this tensor's layer (per-layer values).
    const double lambda = SpecAt(index).lambda;
    ChunkedDenseMerge merge =
        spec_.method == Method::kDare
            ? ChunkedDenseMerge::Dare(static_cast<int64_t>(fts.size()),
                                      spec_.drop, lambda, spec_.seed, name)
            : ChunkedDenseMerge::TaskArithmetic(
                  static_cast<int64_t>(fts.size()), lambda);
    // BF16 task arithmetic in float32 (the common case): one fused pass
    // per chunk (dense_merge_kernel.h), the tensor ops below only for a
    // chunk holding a non-finite value.
    const bool fused_pass = spec_.method == Method::kTaskArithmetic &&
                            stored == at::kBFloat16 && compute == at::kFloat;
    std::vector<at::Tensor> raw_ft;
    std::vector<const uint16_t*> ft_bits;
    if (fused_pass) {
      for (size_t i = 0; i < fts.size(); ++i) {
        raw_ft.push_back(in.Buffer(stored));
        ft_bits.push_back(
            static_cast<const uint16_t*>(raw_ft.back().data_ptr()));
      }
    }
    for (int64_t off = 0; off < n; off += t.chunk) {
      const int64_t m = std::min(t.chunk, n - off);
      auto view = [m](const at::Tensor& x) { return x.narrow(0, 0, m); };
      const uint64_t byte_off = static_cast<uint64_t>(off) * t.element_size;
      const uint64_t byte_len = static_cast<uint64_t>(m) * t.element_size;
      if (fused_pass) {
        void* raw = in.raw().data_ptr();
        TAILOR_RETURN_IF_ERROR(
            base_->ReadRawRange(name, byte_off, byte_len, raw));
        for (size_t i = 0; i < fts.size(); ++i) {
          TAILOR_RETURN_IF_ERROR(fts[i]->ReadRawRange(name, byte_off, byte_len,
                                                      raw_ft[i].data_ptr()));
        }
        int64_t chunk_kept = 0;
        if (TaskArithmeticBf16Chunk(
                static_cast<const uint16_t*>(raw), ft_bits, m, lambda,
                static_cast<uint16_t*>(out_buf.data_ptr()), &chunk_kept)) {
          kept += chunk_kept;
          const absl::string_view bytes(
              static_cast<const char*>(out_buf.data_ptr()), byte_len);
          TAILOR_RETURN_IF_ERROR(WriteStreamed(index, info, bytes, &output));
          continue;
        }
      }
      TAILOR_RETURN_IF_ERROR(in.Read(off, m));
      const at::Tensor& pre = in.pre();
      std::vector<at::Tensor>& deltas = in.deltas();
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
          static_cast<const char*>(stored_chunk.data_ptr()), byte_len);
      TAILOR_RETURN_IF_ERROR(WriteStreamed(index, info, bytes, &output));
    }
    return absl::OkStatus();
  }));
  TAILOR_RETURN_IF_ERROR(
      FinishStreamed(index, info, kept, TaskLabels(), t0, &output, &out));
  return out;
}

bool FusionRun::StitchesPatches() const {
  if (spec_.method != Method::kTailor && spec_.method != Method::kMagnitude) {
    return false;
  }
  return std::all_of(tasks_.begin(), tasks_.end(),
                     [](const auto& task) { return task->patch != nullptr; });
}

absl::StatusOr<JournalEntry> FusionRun::StreamStitch(size_t index,
                                                     const TensorInfo& info) {
  const Stopwatch t0;
  const std::string& name = info.name;
  JournalEntry out = NewEntry(index, info);
  std::vector<const PatchFile*> patches;
  for (const auto& task : tasks_) {
    patches.push_back(task->patch->Find(name) != nullptr ? task->patch.get()
                                                         : nullptr);
  }
  const at::ScalarType compute =
      spec_.tailor.float64 ? at::kDouble : at::kFloat;
  // The tensor is begun at its first chunk, as every streamed tensor.
  StreamedOutput output;
  auto sink = [&](absl::string_view bytes) -> absl::Status {
    if (!writer_) return absl::OkStatus();
    return WriteStreamed(index, info, bytes, &output);
  };
  TAILOR_ASSIGN_OR_RETURN(
      StitchStreamResult r,
      StreamStitchedTensor(*base_, info, patches, spec_.aggregation, compute,
                           options_.stream_chunk_elements, stitched_ != nullptr,
                           sink));
  nlohmann::json per_task = TaskLabels();
  for (size_t t = 0; t < tasks_.size(); ++t) {
    per_task[t]["source"] = "patch";
    per_task[t]["kept"] = r.task_kept[t];
  }
  if (stitched_) {
    nlohmann::json patch_stats = {{"kept", r.kept}, {"tasks", per_task}};
    out.patches.push_back(JournalPatch{"stitched", *std::move(r.stitched),
                                       std::move(patch_stats)});
  }
  TAILOR_RETURN_IF_ERROR(
      FinishStreamed(index, info, r.kept, per_task, t0, &output, &out));
  return out;
}

}  // namespace fusion_internal
}  // namespace tailor
