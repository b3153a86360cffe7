// FusionRun::StreamMergekit (fusion_run.h): the elementwise mergekit-family
// methods (ChunkedMergekit, mergekit_methods.h) over a tensor read in
// chunks of options.stream_chunk_elements, written straight to the fused
// checkpoint's writer and spooled to the journal. SLERP and Model Stock
// read every chunk twice: their statistics first, then the output pass.
// The same bytes and report rows as FuseOne.

#include <algorithm>
#include <utility>

#include "fusion/delta_chunk_reader.h"
#include "fusion/fusion_run.h"
#include "fusion/mergekit_methods.h"
#include "util/status_macros.h"
#include "util/torch_status.h"

namespace tailor {
namespace fusion_internal {

absl::StatusOr<JournalEntry> FusionRun::StreamMergekit(size_t index,
                                                       const TensorInfo& info) {
  const Stopwatch t0;
  const std::string& name = info.name;
  JournalEntry out = NewEntry(index, info);
  const StreamedTensor t = StreamedTensorOf(info);
  const int64_t n = t.numel;
  // This tensor's layer's values (per-layer parameters).
  const MergekitParams params = MergekitParamsOf(SpecAt(index));
  // The tensor is begun at its first output chunk (WriteStreamed): a bad
  // input found by the statistics pass is refused before anything is
  // written.
  StreamedOutput output;
  int64_t kept = 0;
  TAILOR_RETURN_IF_ERROR(CatchTorch(name, [&]() -> absl::Status {
    // Reused for every chunk: raw input, pre-trained, one delta per task.
    // A NaN/Inf input is refused as FuseOne does.
    DeltaChunkReader in(t);
    ChunkedMergekit merge(params, static_cast<int64_t>(t.finetuned.size()),
                          name);
    if (merge.NeedsStatistics()) {
      for (int64_t off = 0; off < n; off += t.chunk) {
        TAILOR_RETURN_IF_ERROR(in.Read(off, std::min(t.chunk, n - off)));
        merge.AddStatistics(in.pre(), in.deltas());
      }
      merge.EndStatistics();
    }
    for (int64_t off = 0; off < n; off += t.chunk) {
      const int64_t m = std::min(t.chunk, n - off);
      TAILOR_RETURN_IF_ERROR(in.Read(off, m));
      const at::Tensor delta = merge.Merge(in.pre(), in.deltas());
      const at::Tensor mask = delta.ne(0);
      kept += mask.sum().item<int64_t>();
      // FuseTensor: float32 pre + float32 delta where the mask holds,
      // float32 pre elsewhere; then the stored dtype (ToStoredTensor).
      const at::Tensor pre_f = in.pre().to(at::kFloat);
      const at::Tensor fused =
          at::where(mask, pre_f + delta.to(at::kFloat), pre_f);
      const at::Tensor stored_chunk = fused.to(t.stored).contiguous();
      const absl::string_view bytes(
          static_cast<const char*>(stored_chunk.data_ptr()),
          static_cast<size_t>(m) * t.element_size);
      TAILOR_RETURN_IF_ERROR(WriteStreamed(index, info, bytes, &output));
    }
    return absl::OkStatus();
  }));
  TAILOR_RETURN_IF_ERROR(
      FinishStreamed(index, info, kept, TaskLabels(), t0, &output, &out));
  return out;
}

}  // namespace fusion_internal
}  // namespace tailor
