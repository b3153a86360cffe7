#include "fusion/stitch_stream.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <memory>
#include <string>

#include "absl/strings/str_cat.h"
#include "fusion/patch_stream.h"
#include "fusion/tailor_kernel.h"
#include "io/bit_packing.h"
#include "io/dtype.h"
#include "io/tensor_convert.h"
#include "util/status_macros.h"

namespace tailor {

absl::StatusOr<StitchStreamResult> StreamStitchedTensor(
    const Checkpoint& base, const TensorInfo& info,
    const std::vector<const PatchFile*>& patches, Aggregation aggregation,
    at::ScalarType compute, int64_t chunk_elements, bool pack_stitched,
    absl::FunctionRef<absl::Status(absl::string_view)> sink) {
  const std::string& name = info.name;
  const at::ScalarType stored = *ToScalarType(info.dtype);
  const int64_t n = info.numel;
  const uint64_t esize = info.nbytes / static_cast<uint64_t>(n);
  const int64_t chunk = std::clamp<int64_t>(chunk_elements, 1, n);
  const std::string label = absl::StrCat("output tensor '", name, "'");

  StitchStreamResult result;
  std::vector<std::unique_ptr<PatchEntryStream>> streams(patches.size());
  for (size_t t = 0; t < patches.size(); ++t) {
    int64_t kept = 0;
    if (patches[t] != nullptr) {
      TAILOR_ASSIGN_OR_RETURN(streams[t],
                              PatchEntryStream::Open(*patches[t], name, chunk));
      kept = streams[t]->kept();
    }
    result.task_kept.push_back(kept);
  }
  PackedPatchEntry packed;
  if (pack_stitched) {
    packed.shape = info.shape;
    packed.mask.assign(static_cast<size_t>(PackedMaskBytes(n)), '\0');
  }

  // Reused for every chunk: the stored bytes, pre-trained in `compute`, one
  // delta per task and a zero mask for tasks without an entry. Stitch(),
  // FuseTensor() and the stored form allocate per chunk (bounded by it).
  auto buffer = [&](at::ScalarType t) {
    return at::empty({chunk}, at::TensorOptions().dtype(t));
  };
  at::Tensor raw = buffer(stored);
  at::Tensor pre_buf = stored == compute ? raw : buffer(compute);
  std::vector<at::Tensor> delta_buf;
  for (size_t t = 0; t < patches.size(); ++t) {
    delta_buf.push_back(buffer(compute));
  }
  at::Tensor no_mask = at::zeros({chunk}, at::kBool);
  std::vector<TaskDelta> deltas(patches.size());
  int64_t bit = 0;  // next bit of packed.mask
  for (int64_t off = 0; off < n; off += chunk) {
    const int64_t m = std::min(chunk, n - off);
    TAILOR_RETURN_IF_ERROR(
        base.ReadRawRange(name, static_cast<uint64_t>(off) * esize,
                          static_cast<uint64_t>(m) * esize, raw.data_ptr()));
    at::Tensor pre = pre_buf.narrow(0, 0, m);
    if (stored != compute) pre.copy_(raw.narrow(0, 0, m));
    TAILOR_RETURN_IF_ERROR(CheckFiniteTensor(pre, name, "pre-trained tensor"));
    for (size_t t = 0; t < patches.size(); ++t) {
      // PatchFile::Load: zeros, the values scattered at the mask, then the
      // compute type (float32 -> float64 is exact).
      at::Tensor delta = delta_buf[t].narrow(0, 0, m);
      delta.zero_();
      if (streams[t]) {
        at::Tensor mask, values;
        TAILOR_RETURN_IF_ERROR(streams[t]->Next(m, &mask, &values));
        delta.masked_scatter_(mask, values.to(compute));
        deltas[t] = TaskDelta{mask, delta};
      } else {
        deltas[t] = TaskDelta{no_mask.narrow(0, 0, m), delta};
      }
    }
    const MergedDelta merged =
        deltas.size() == 1 ? MergedDelta{deltas[0].mask, deltas[0].delta}
                           : Stitch(deltas, aggregation);
    result.kept += merged.mask.sum().item<int64_t>();
    const at::Tensor kept_values = KeptValues(merged.mask, merged.delta);
    const at::Tensor fused = FuseTensor(pre, merged.mask, kept_values);
    TAILOR_ASSIGN_OR_RETURN(at::Tensor out,
                            ToStoredTensor(fused, info.dtype, label));
    TAILOR_RETURN_IF_ERROR(sink(absl::string_view(
        static_cast<const char*>(out.data_ptr()),
        static_cast<size_t>(out.numel()) * out.element_size())));
    if (pack_stitched) {
      // PackBits' layout, chunk by chunk.
      const at::Tensor mask_c = merged.mask.contiguous();
      OrBits(mask_c.data_ptr<bool>(), m, bit, packed.mask.data());
      bit += m;
      packed.values.append(
          static_cast<const char*>(kept_values.data_ptr()),
          static_cast<size_t>(kept_values.numel()) * sizeof(float));
    }
  }
  if (pack_stitched) result.stitched = std::move(packed);
  return result;
}

}  // namespace tailor
