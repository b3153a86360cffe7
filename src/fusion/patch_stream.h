#ifndef TAILOR_FUSION_PATCH_STREAM_H_
#define TAILOR_FUSION_PATCH_STREAM_H_

// Patches read and applied piece by piece: one weight's packed mask bits and
// kept values decoded for consecutive element ranges straight from the patch
// file, so that applying or stitching a patch needs working memory bounded
// by a chunk of elements, not by the tensor (issue #11).

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <memory>
#include <string>

#include "absl/functional/function_ref.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "fusion/patch.h"
#include "io/checkpoint.h"
#include "io/checkpoint_writer.h"

namespace tailor {

// Decodes weight `name` of a PatchFile in consecutive element ranges, first
// to last. Open() validates the entry as PatchFile::LoadPacked() does before
// anything is decoded -- pad bits zero, popcount equal to the stored value
// count, with LoadPacked's messages -- by reading the packed mask once in
// pieces of at most kMaskScanBytes; Next() checks each range's values are
// finite (LoadPacked's message again) as it reads them. Working memory is
// two buffers of `chunk_elements` (the mask as bool, the values as float32)
// and one of chunk_elements / 8 + 2 packed bytes, whatever the tensor's
// size. Not thread-safe; `patch` must outlive the stream.
class PatchEntryStream {
 public:
  static constexpr uint64_t kMaskScanBytes = uint64_t{1} << 20;

  static absl::StatusOr<std::unique_ptr<PatchEntryStream>> Open(
      const PatchFile& patch, absl::string_view name, int64_t chunk_elements);

  // The next `m` elements (1 <= m <= chunk_elements, not past the end):
  // `*mask` becomes a bool [m] view of a reused buffer (element i of the
  // range set iff its bit is), `*values` a float32 [popcount of the range]
  // view of another, the kept values of the range in row-major order. Both
  // stay valid until the next call.
  absl::Status Next(int64_t m, at::Tensor* mask, at::Tensor* values);

  int64_t numel() const { return numel_; }
  int64_t kept() const { return kept_; }
  // Elements decoded so far.
  int64_t position() const { return position_; }

 private:
  PatchEntryStream() = default;
  const PatchFile* patch_ = nullptr;
  std::string name_, label_;
  int64_t numel_ = 0, kept_ = 0, chunk_ = 0;
  int64_t position_ = 0;     // next element
  int64_t values_read_ = 0;  // next kept value
  std::string packed_;       // the current range's mask bytes
  at::Tensor mask_buf_;      // bool [chunk]
  at::Tensor values_buf_;    // float32 [chunk]
};

// Writes base tensor `info` (a stored dtype LibTorch has, at least one
// element) patched with `patch`'s entry for it to `writer` in chunks of
// `chunk_elements`: per chunk the base bytes are read, converted to float32,
// the kept values added at the set bits and the result stored in the base
// dtype -- FuseTensor(pre, mask, values) then the base dtype, elementwise,
// so the bytes equal ApplyPatch's whole-tensor path. A bad entry is refused
// before anything is written; a non-finite value midway leaves the tensor
// unfinished (the writer then refuses to commit).
absl::Status StreamPatchedTensor(const Checkpoint& base, const TensorInfo& info,
                                 const PatchFile& patch, int64_t chunk_elements,
                                 CheckpointWriter* writer);

// Copies base tensor `info` byte for byte to `writer` in pieces of at most
// `chunk_bytes` (ApplyPatch's unpatched tensors): memory bounded by the
// piece, not the tensor.
absl::Status StreamCopiedTensor(const Checkpoint& base, const TensorInfo& info,
                                uint64_t chunk_bytes, CheckpointWriter* writer);

}  // namespace tailor

#endif  // TAILOR_FUSION_PATCH_STREAM_H_
