#ifndef TAILOR_FUSION_STREAMED_CHUNK_IO_H_
#define TAILOR_FUSION_STREAMED_CHUNK_IO_H_

// The streamed threshold merges' (streamed_merge.cc) side of the stored
// bytes: ChunkReader reads a tensor's chunks in the compute type, Encode
// writes a fused chunk back in the stored dtype.

#include <c10/core/ScalarType.h>

#include <cstdint>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "fusion/streamed_merge.h"

namespace tailor::streamed_internal {

// Reads a tensor of the base and of every task in chunks, in the compute
// type T (float or double), into buffers allocated once: pre() and
// delta(i) = ft_i - pre. `t` must outlive the reader.
template <typename T>
class ChunkReader {
 public:
  explicit ChunkReader(const StreamedTensor& t);

  // Reads elements [off, off + m); returns whether every pre-trained and
  // fine-tuned value is finite (in T, as FuseOne checks them). A delta of
  // finite inputs may still overflow to +-Inf: delta_nonfinite(i) says so,
  // accumulated over every chunk read.
  absl::StatusOr<bool> Read(int64_t off, int64_t m);

  // After Read found a non-finite input: FuseOne's error for it, which
  // names the first input holding one in its order (the pre-trained tensor,
  // then each task's fine-tuned tensor), found by a scan of each in chunks
  // (this reader's buffers; nothing the size of the tensor). A read error
  // on the way is returned as is.
  absl::Status NonFiniteInputError();

  bool delta_nonfinite(size_t i) const { return delta_nonfinite_[i]; }
  void set_delta_nonfinite(size_t i) { delta_nonfinite_[i] = true; }

  // BF16 checkpoints: reads the stored bits of elements [off, off + m) of
  // the base (pre_bits()) and of task `task` (ft_bits()) only, for loops
  // that decode and check them themselves.
  absl::Status ReadBits(int64_t off, int64_t m, size_t task);
  const uint16_t* pre_bits() const {
    return reinterpret_cast<const uint16_t*>(raw_.data());
  }
  const uint16_t* ft_bits() const {
    return reinterpret_cast<const uint16_t*>(raw_ft_.data());
  }

  const T* pre() const { return pre_.data(); }
  const T* delta(size_t i) const { return delta_[i].data(); }

 private:
  // Read for BF16 checkpoints: one pass over the raw bits per task
  // (decode, check, subtract).
  absl::StatusOr<bool> ReadBf16(int64_t off, int64_t m);
  absl::Status ReadInto(const Checkpoint& src, int64_t off, int64_t m, T* out);

  const StreamedTensor& t_;
  std::vector<char> raw_;     // stored bytes (the base's, for BF16)
  std::vector<char> raw_ft_;  // BF16: a task's stored bytes
  std::vector<T> pre_;
  std::vector<std::vector<T>> delta_;
  std::vector<bool> delta_nonfinite_;  // per task, over the chunks read
};

extern template class ChunkReader<float>;
extern template class ChunkReader<double>;

// The fused float32 chunk of m elements in the stored dtype
// (ToStoredTensor: round to nearest even), into `out`.
void Encode(const float* fused, int64_t m, at::ScalarType stored, char* out);

}  // namespace tailor::streamed_internal

#endif  // TAILOR_FUSION_STREAMED_CHUNK_IO_H_
