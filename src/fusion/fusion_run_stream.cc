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

absl::StatusOr<JournalEntry> FusionRun::StreamThreshold(
    size_t index, const TensorInfo& info) {
  const Stopwatch t0;
  StreamedTensor t;
  t.name = info.name;
  t.stored = *ToScalarType(info.dtype);
  t.numel = info.numel;
  t.element_size = info.nbytes / static_cast<uint64_t>(info.numel);
  t.chunk = std::clamp<int64_t>(options_.stream_chunk_elements, 1, t.numel);
  t.base = base_.get();
  t.float64 = spec_.tailor.float64;
  const FusionSpec& spec = SpecAt(index);  // this tensor's layer's
  StreamedMergeOptions o;
  o.method = spec_.method == Method::kMagnitude ? StreamedMethod::kMagnitude
             : spec_.method == Method::kTies    ? StreamedMethod::kTies
                                                : StreamedMethod::kSpider;
  o.aggregation = spec_.aggregation;
  o.density = spec.density;
  o.lambda = spec.lambda;
  for (size_t i = 0; i < tasks_.size(); ++i) {
    t.finetuned.push_back(
        dynamic_cast<const Checkpoint*>(tasks_[i]->finetuned.get()));
    o.keep_ratio.push_back(OptionsAt(index, i).keep_ratio);
  }
  // The streamed bytes go to the journal chunk by chunk (BeginSpool). The
  // tensor is begun at its first chunk: a bad input is refused before.
  std::shared_ptr<JournalFusedSpool> spool;
  std::optional<CheckpointWriter::TensorStream> stream;
  auto write = [&](absl::string_view bytes) -> absl::Status {
    if (!stream) {
      TAILOR_ASSIGN_OR_RETURN(stream, writer_->BeginTensor(info.name));
      spool = BeginSpool(index, info);
    }
    TAILOR_RETURN_IF_ERROR(writer_->WriteChunk(&*stream, bytes));
    Spool(spool, bytes);
    return absl::OkStatus();
  };
  TAILOR_ASSIGN_OR_RETURN(StreamedMergeResult r, CatchTorch(info.name, [&] {
                            return StreamThresholdMerge(t, o, write);
                          }));
  TAILOR_RETURN_IF_ERROR(writer_->EndTensor(&*stream));
  hessians_.Finished(static_cast<int64_t>(index));
  JournalEntry out = NewEntry(index, info);
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
    per_task.push_back(std::move(tj));
  }
  nlohmann::json entry = FusedReportEntry(info, r.kept, per_task);
  entry["seconds"] = t0.Seconds();
  out.report = std::move(entry);
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
    // The scale of this tensor's layer (per-layer values).
    const double lambda = SpecAt(index).lambda;
    ChunkedDenseMerge merge =
        spec_.method == Method::kDare
            ? ChunkedDenseMerge::Dare(static_cast<int64_t>(fts.size()),
                                      spec_.drop, lambda, spec_.seed, name)
            : ChunkedDenseMerge::TaskArithmetic(
                  static_cast<int64_t>(fts.size()), lambda);
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
          TAILOR_RETURN_IF_ERROR(fts[t]->ReadRawRange(name, byte_off, byte_len,
                                                      raw_ft[t].data_ptr()));
        }
        int64_t chunk_kept = 0;
        if (TaskArithmeticBf16Chunk(
                static_cast<const uint16_t*>(raw.data_ptr()), ft_bits, m,
                lambda, static_cast<uint16_t*>(out_buf.data_ptr()),
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
  entry["seconds"] = t0.Seconds();
  out.report = std::move(entry);
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
                           options_.stream_chunk_elements, stitched_ != nullptr,
                           sink));
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
  entry["seconds"] = t0.Seconds();
  out.report = std::move(entry);
  return out;
}

}  // namespace fusion_internal
}  // namespace tailor
