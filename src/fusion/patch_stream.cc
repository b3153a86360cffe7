#include "fusion/patch_stream.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <cmath>
#include <utility>

#include "absl/strings/str_cat.h"
#include "io/bit_packing.h"
#include "io/dtype.h"
#include "io/tensor_convert.h"
#include "util/quote.h"
#include "util/status_macros.h"

namespace tailor {

absl::StatusOr<std::unique_ptr<PatchEntryStream>> PatchEntryStream::Open(
    const PatchFile& patch, absl::string_view name, int64_t chunk_elements) {
  const PatchFile::TensorEntry* entry = patch.Find(name);
  if (entry == nullptr) {
    return absl::NotFoundError(
        absl::StrCat(patch.path(), ": the patch has no tensor ", Quote(name)));
  }
  std::unique_ptr<PatchEntryStream> s(new PatchEntryStream());
  s->patch_ = &patch;
  s->name_ = std::string(name);
  s->label_ = absl::StrCat(patch.path(), ": tensor ", Quote(name));
  // PatchFile::Open() checked the shape's product fits an int64_t.
  int64_t n = 1;
  for (int64_t d : entry->shape) n *= d;
  s->numel_ = n;
  s->kept_ = entry->kept;
  s->chunk_ = std::max<int64_t>(1, chunk_elements);

  // The whole mask once, in bounded pieces: the checks LoadPacked() makes
  // (UnpackBits, popcount), with its messages, before anything is decoded.
  const uint64_t mask_bytes = static_cast<uint64_t>(PackedMaskBytes(n));
  std::string piece;
  int64_t popcount = 0;
  for (uint64_t off = 0; off < mask_bytes;) {
    const uint64_t len = std::min(kMaskScanBytes, mask_bytes - off);
    piece.resize(static_cast<size_t>(len));
    TAILOR_RETURN_IF_ERROR(patch.ReadMaskBytes(name, off, len, piece.data()));
    for (char c : piece)
      popcount += __builtin_popcount(static_cast<uint8_t>(c));
    off += len;
    if (off == mask_bytes) {
      TAILOR_RETURN_IF_ERROR(
          CheckPadBits(static_cast<uint8_t>(piece.back()), n, s->label_));
    }
  }
  if (popcount != s->kept_) {
    return absl::InvalidArgumentError(absl::StrCat(
        s->label_, ": the mask has ", popcount, " set bits but ", s->kept_,
        " values are stored (popcount must equal kept)"));
  }
  const int64_t buffer = std::min(s->chunk_, std::max<int64_t>(n, 1));
  s->mask_buf_ = at::empty({buffer}, at::kBool);
  s->values_buf_ = at::empty({buffer}, at::kFloat);
  s->packed_.reserve(static_cast<size_t>(buffer / 8 + 2));
  return s;
}

absl::Status PatchEntryStream::Next(int64_t m, at::Tensor* mask,
                                    at::Tensor* values) {
  if (m < 1 || m > mask_buf_.numel() || m > numel_ - position_) {
    return absl::InternalError(absl::StrCat(label_, ": bad range of ", m,
                                            " elements at ", position_, " (",
                                            numel_, " in all)"));
  }
  const int64_t first_byte = position_ / 8;
  const int64_t last_byte = (position_ + m - 1) / 8;
  packed_.resize(static_cast<size_t>(last_byte - first_byte + 1));
  TAILOR_RETURN_IF_ERROR(
      patch_->ReadMaskBytes(name_, static_cast<uint64_t>(first_byte),
                            packed_.size(), packed_.data()));
  const int64_t shift = position_ - 8 * first_byte;  // 0..7
  const int64_t count =
      UnpackBitRange(reinterpret_cast<const uint8_t*>(packed_.data()), shift, m,
                     mask_buf_.data_ptr<bool>());
  if (count > kept_ - values_read_) {
    // Open() counted kept_ set bits: the file changed since.
    return absl::DataLossError(absl::StrCat(
        label_, ": the mask changed while it was read (more set bits than ",
        kept_, ")"));
  }
  float* vals = values_buf_.data_ptr<float>();
  if (count > 0) {
    TAILOR_RETURN_IF_ERROR(
        patch_->ReadValues(name_, values_read_, count, vals));
  }
  for (int64_t j = 0; j < count; ++j) {
    if (!std::isfinite(vals[j])) {
      // Refused like NaN fine-tuned weights: a NaN would reach the output.
      return absl::InvalidArgumentError(
          absl::StrCat(label_, ": the patch values contain NaN or Inf"));
    }
  }
  values_read_ += count;
  position_ += m;
  *mask = mask_buf_.narrow(0, 0, m);
  *values = values_buf_.narrow(0, 0, count);
  return absl::OkStatus();
}

absl::Status StreamPatchedTensor(const Checkpoint& base, const TensorInfo& info,
                                 const PatchFile& patch, int64_t chunk_elements,
                                 CheckpointWriter* writer) {
  const std::string& name = info.name;
  const at::ScalarType stored = *ToScalarType(info.dtype);
  const int64_t n = info.numel;
  const uint64_t esize = info.nbytes / static_cast<uint64_t>(n);
  const int64_t chunk = std::clamp<int64_t>(chunk_elements, 1, n);
  TAILOR_ASSIGN_OR_RETURN(std::unique_ptr<PatchEntryStream> entry,
                          PatchEntryStream::Open(patch, name, chunk));
  // Reused for every chunk: the stored bytes (read, then the result) and
  // their float32 form (the same buffer for an F32 tensor).
  at::Tensor raw = at::empty({chunk}, at::TensorOptions().dtype(stored));
  at::Tensor fused =
      stored == at::kFloat ? raw : at::empty({chunk}, at::kFloat);
  TAILOR_ASSIGN_OR_RETURN(CheckpointWriter::TensorStream stream,
                          writer->BeginTensor(name));
  at::Tensor mask, values;
  for (int64_t off = 0; off < n; off += chunk) {
    const int64_t m = std::min(chunk, n - off);
    const uint64_t byte_len = static_cast<uint64_t>(m) * esize;
    at::Tensor raw_m = raw.narrow(0, 0, m);
    at::Tensor fused_m = fused.narrow(0, 0, m);
    TAILOR_RETURN_IF_ERROR(base.ReadRawRange(
        name, static_cast<uint64_t>(off) * esize, byte_len, raw.data_ptr()));
    // pre.to(float32), as Checkpoint::Read gives it to FuseTensor.
    if (stored != at::kFloat) fused_m.copy_(raw_m);
    TAILOR_RETURN_IF_ERROR(entry->Next(m, &mask, &values));
    // FuseTensor: flat[idx] = flat[idx] + values, one float32 addition per
    // set bit, in row-major order.
    const uint8_t* bits = reinterpret_cast<const uint8_t*>(mask.data_ptr());
    const float* add = values.data_ptr<float>();
    float* f = fused_m.data_ptr<float>();
    int64_t j = 0;
    for (int64_t i = 0; i < m; ++i) {
      if (bits[i]) f[i] = f[i] + add[j++];
    }
    // ToStoredTensor: the base dtype, LibTorch's conversion.
    if (stored != at::kFloat) raw_m.copy_(fused_m);
    TAILOR_RETURN_IF_ERROR(writer->WriteChunk(
        &stream,
        absl::string_view(static_cast<const char*>(raw.data_ptr()), byte_len)));
  }
  return writer->EndTensor(&stream);
}

absl::Status StreamCopiedTensor(const Checkpoint& base, const TensorInfo& info,
                                uint64_t chunk_bytes,
                                CheckpointWriter* writer) {
  const uint64_t piece = std::max<uint64_t>(1, chunk_bytes);
  std::string buffer;
  buffer.resize(static_cast<size_t>(std::min(piece, info.nbytes)));
  TAILOR_ASSIGN_OR_RETURN(CheckpointWriter::TensorStream stream,
                          writer->BeginTensor(info.name));
  for (uint64_t off = 0; off < info.nbytes;) {
    const uint64_t n = std::min(piece, info.nbytes - off);
    TAILOR_RETURN_IF_ERROR(base.ReadRawRange(info.name, off, n, buffer.data()));
    TAILOR_RETURN_IF_ERROR(writer->WriteChunk(
        &stream, absl::string_view(buffer.data(), static_cast<size_t>(n))));
    off += n;
  }
  return writer->EndTensor(&stream);
}

}  // namespace tailor
