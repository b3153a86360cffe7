#ifndef TAILOR_FUSION_DELTA_CHUNK_READER_H_
#define TAILOR_FUSION_DELTA_CHUNK_READER_H_

// The input side of the streamed merges that work in tensor ops
// (FusionRun::StreamOne, StreamMergekit): one chunk of the base and of every
// task's fine-tuned tensor at a time, in the compute type, as FuseOne reads
// and checks them whole. Needs LibTorch.

#include <ATen/ATen.h>

#include <cstdint>
#include <vector>

#include "absl/status/status.h"
#include "fusion/streamed_merge.h"

namespace tailor {

// Reads streamed tensor `t` (StreamedTensor: its name, stored dtype, chunk
// size, base and fine-tuned checkpoints) chunk by chunk, in the compute type
// (double with t.float64, float otherwise), into buffers of t.chunk elements
// allocated once. `t` must outlive the reader. The
// constructor allocates (LibTorch may throw c10::Error: build it inside
// CatchTorch).
class DeltaChunkReader {
 public:
  explicit DeltaChunkReader(const StreamedTensor& t);
  DeltaChunkReader(const DeltaChunkReader&) = delete;
  DeltaChunkReader& operator=(const DeltaChunkReader&) = delete;

  // Reads elements [off, off + m) (0 < m <= t.chunk) of the base into pre()
  // and of each task i into deltas()[i] = ft_i - pre, in the compute type.
  // A NaN or Inf input is FuseOne's INVALID_ARGUMENT "<name>: pre-trained
  // tensor contains NaN or Inf" (or "fine-tuned"): the base is checked
  // first, then the tasks in order. A read error is returned as is.
  absl::Status Read(int64_t off, int64_t m);

  // The last Read's m elements: views into the buffers, valid until the
  // next Read. The deltas may be changed in place (a merge's scratch).
  const at::Tensor& pre() const { return pre_; }
  std::vector<at::Tensor>& deltas() { return deltas_; }

  at::ScalarType compute() const { return compute_; }

  // A new buffer of t.chunk elements of `type`, for the caller's scratch.
  at::Tensor Buffer(at::ScalarType type) const;

  // The stored-dtype buffer Read converts through (t.chunk elements): the
  // caller may use it between Reads (a loop over the raw bits).
  const at::Tensor& raw() const { return raw_; }

 private:
  // Reads elements [off, off + m) of `src` into `dst` (compute type).
  absl::Status ReadInto(const Checkpoint& src, int64_t off, int64_t m,
                        const at::Tensor& dst);

  const StreamedTensor& t_;
  const at::ScalarType compute_;
  at::Tensor raw_;                     // stored dtype
  at::Tensor pre_buf_;                 // compute type
  std::vector<at::Tensor> delta_buf_;  // compute type, one per task
  at::Tensor pre_;                     // views of the last Read
  std::vector<at::Tensor> deltas_;
};

}  // namespace tailor

#endif  // TAILOR_FUSION_DELTA_CHUNK_READER_H_
