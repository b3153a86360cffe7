#include "fusion/delta_chunk_reader.h"

#include "fusion/all_finite.h"
#include "io/checkpoint.h"
#include "util/status_macros.h"

namespace tailor {

DeltaChunkReader::DeltaChunkReader(const StreamedTensor& t)
    : t_(t),
      compute_(t.float64 ? at::kDouble : at::kFloat),
      deltas_(t.finetuned.size()) {
  raw_ = Buffer(t.stored);
  pre_buf_ = Buffer(compute_);
  for (size_t i = 0; i < t.finetuned.size(); ++i) {
    delta_buf_.push_back(Buffer(compute_));
  }
}

at::Tensor DeltaChunkReader::Buffer(at::ScalarType type) const {
  return at::empty({t_.chunk}, at::TensorOptions().dtype(type));
}

absl::Status DeltaChunkReader::ReadInto(const Checkpoint& src, int64_t off,
                                        int64_t m, const at::Tensor& dst) {
  const at::Tensor& into = t_.stored == compute_ ? dst : raw_.narrow(0, 0, m);
  TAILOR_RETURN_IF_ERROR(src.ReadRawRange(
      t_.name, static_cast<uint64_t>(off) * t_.element_size,
      static_cast<uint64_t>(m) * t_.element_size, into.data_ptr()));
  if (t_.stored != compute_) dst.copy_(into);
  return absl::OkStatus();
}

absl::Status DeltaChunkReader::Read(int64_t off, int64_t m) {
  pre_ = pre_buf_.narrow(0, 0, m);
  TAILOR_RETURN_IF_ERROR(ReadInto(*t_.base, off, m, pre_));
  TAILOR_RETURN_IF_ERROR(
      CheckFiniteTensor(pre_, t_.name, "pre-trained tensor"));
  for (size_t i = 0; i < deltas_.size(); ++i) {
    deltas_[i] = delta_buf_[i].narrow(0, 0, m);
    TAILOR_RETURN_IF_ERROR(ReadInto(*t_.finetuned[i], off, m, deltas_[i]));
    TAILOR_RETURN_IF_ERROR(
        CheckFiniteTensor(deltas_[i], t_.name, "fine-tuned tensor"));
    deltas_[i].sub_(pre_);  // ft - pre
  }
  return absl::OkStatus();
}

}  // namespace tailor
