// FusionRun::StreamMergekit (fusion_run.h): the elementwise mergekit-family
// methods (ChunkedMergekit, mergekit_methods.h) over a tensor read in
// chunks of options.stream_chunk_elements, written straight to the fused
// checkpoint's writer and spooled to the journal. SLERP and Model Stock
// read every chunk twice: their statistics first, then the output pass.
// The same bytes and report rows as FuseOne.

#include <algorithm>
#include <utility>

#include "absl/strings/str_cat.h"
#include "fusion/fusion_run.h"
#include "fusion/mergekit_methods.h"
#include "io/tensor_convert.h"
#include "util/status_macros.h"
#include "util/torch_status.h"

namespace tailor {
namespace fusion_internal {

absl::StatusOr<JournalEntry> FusionRun::StreamMergekit(size_t index,
                                                       const TensorInfo& info) {
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
  // This tensor's layer's values (per-layer parameters).
  const MergekitParams params = MergekitParamsOf(SpecAt(index));
  // The tensor is begun at its first output chunk: a bad input found by
  // the statistics pass is refused before anything is written.
  std::shared_ptr<JournalFusedSpool> spool;
  std::optional<CheckpointWriter::TensorStream> stream;
  int64_t kept = 0;
  TAILOR_RETURN_IF_ERROR(CatchTorch(name, [&]() -> absl::Status {
    auto buffer = [&](at::ScalarType t) {
      return at::empty({chunk}, at::TensorOptions().dtype(t));
    };
    // Reused for every chunk: raw input, pre-trained, one delta per task.
    at::Tensor raw = buffer(stored);
    at::Tensor pre_buf = buffer(compute);
    std::vector<at::Tensor> delta_buf;
    for (size_t t = 0; t < fts.size(); ++t) {
      delta_buf.push_back(buffer(compute));
    }
    ChunkedMergekit merge(params, static_cast<int64_t>(fts.size()), name);
    std::vector<at::Tensor> deltas(fts.size());
    at::Tensor pre;
    // Reads elements [off, off + m) of the base and the tasks into pre and
    // deltas (D_i = ft_i - pre, in the compute type), refusing a NaN/Inf
    // input as FuseOne does.
    auto read_chunk = [&](int64_t off, int64_t m) -> absl::Status {
      auto view = [m](const at::Tensor& t) { return t.narrow(0, 0, m); };
      const uint64_t byte_off = static_cast<uint64_t>(off) * esize;
      const uint64_t byte_len = static_cast<uint64_t>(m) * esize;
      auto read = [&](const Checkpoint& src, const at::Tensor& dst) {
        const at::Tensor& into = stored == compute ? dst : view(raw);
        TAILOR_RETURN_IF_ERROR(
            src.ReadRawRange(name, byte_off, byte_len, into.data_ptr()));
        if (stored != compute) dst.copy_(into);
        return absl::OkStatus();
      };
      pre = view(pre_buf);
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
      return absl::OkStatus();
    };
    if (merge.NeedsStatistics()) {
      for (int64_t off = 0; off < n; off += chunk) {
        TAILOR_RETURN_IF_ERROR(read_chunk(off, std::min(chunk, n - off)));
        merge.AddStatistics(pre, deltas);
      }
      merge.EndStatistics();
    }
    for (int64_t off = 0; off < n; off += chunk) {
      const int64_t m = std::min(chunk, n - off);
      TAILOR_RETURN_IF_ERROR(read_chunk(off, m));
      const at::Tensor delta = merge.Merge(pre, deltas);
      const at::Tensor mask = delta.ne(0);
      kept += mask.sum().item<int64_t>();
      // FuseTensor: float32 pre + float32 delta where the mask holds,
      // float32 pre elsewhere; then the stored dtype (ToStoredTensor).
      const at::Tensor pre_f = pre.to(at::kFloat);
      const at::Tensor fused =
          at::where(mask, pre_f + delta.to(at::kFloat), pre_f);
      const at::Tensor stored_chunk = fused.to(stored).contiguous();
      const absl::string_view bytes(
          static_cast<const char*>(stored_chunk.data_ptr()),
          static_cast<size_t>(m) * esize);
      if (!stream) {
        TAILOR_ASSIGN_OR_RETURN(stream, writer_->BeginTensor(name));
        spool = BeginSpool(index, info);
      }
      TAILOR_RETURN_IF_ERROR(writer_->WriteChunk(&*stream, bytes));
      Spool(spool, bytes);
    }
    return absl::OkStatus();
  }));
  TAILOR_RETURN_IF_ERROR(writer_->EndTensor(&*stream));
  hessians_.Finished(static_cast<int64_t>(index));
  out.fused_spool = std::move(spool);
  nlohmann::json entry = FusedReportEntry(info, kept, per_task);
  entry["seconds"] = t0.Seconds();
  out.report = std::move(entry);
  return out;
}

}  // namespace fusion_internal
}  // namespace tailor
