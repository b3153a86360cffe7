#include "fusion/streamed_chunk_io.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "fusion/streamed_elementwise.h"
#include "io/checkpoint.h"
#include "util/bf16_bits.h"
#include "util/status_macros.h"

namespace tailor::streamed_internal {

template <typename T>
ChunkReader<T>::ChunkReader(const StreamedTensor& t)
    : t_(t),
      raw_(t.stored == kScalar<T> ? 0 : t.chunk * t.element_size),
      raw_ft_(t.stored == at::kBFloat16 ? t.chunk * 2 : 0),
      pre_(t.chunk),
      delta_(t.finetuned.size(), std::vector<T>(t.chunk)),
      delta_nonfinite_(t.finetuned.size(), false) {}

template <typename T>
absl::StatusOr<bool> ChunkReader<T>::Read(int64_t off, int64_t m) {
  if (t_.stored == at::kBFloat16) return ReadBf16(off, m);
  TAILOR_RETURN_IF_ERROR(ReadInto(*t_.base, off, m, pre_.data()));
  bool finite = AllFinite(pre_.data(), m);
  const T* p = pre_.data();
  for (size_t i = 0; i < delta_.size(); ++i) {
    T* d = delta_[i].data();
    TAILOR_RETURN_IF_ERROR(ReadInto(*t_.finetuned[i], off, m, d));
    uint32_t bad = 0, bad_delta = 0;
    for (int64_t j = 0; j < m; ++j) {
      bad |= NonFinite(d[j]);
      d[j] = d[j] - p[j];
      bad_delta |= NonFinite(d[j]);
    }
    finite = finite && bad == 0;
    if (bad_delta) delta_nonfinite_[i] = true;
  }
  return finite;
}

template <typename T>
absl::StatusOr<bool> ChunkReader<T>::ReadBf16(int64_t off, int64_t m) {
  const uint64_t byte_off = static_cast<uint64_t>(off) * 2;
  const uint64_t len = static_cast<uint64_t>(m) * 2;
  auto* pb = reinterpret_cast<uint16_t*>(raw_.data());
  TAILOR_RETURN_IF_ERROR(t_.base->ReadRawRange(t_.name, byte_off, len, pb));
  T* p = pre_.data();
  uint32_t bad = 0;
  for (int64_t j = 0; j < m; ++j) {
    bad |= (pb[j] & 0x7f80u) == 0x7f80u;
    p[j] = static_cast<T>(Bf16ToFloat(pb[j]));
  }
  auto* fb = reinterpret_cast<uint16_t*>(raw_ft_.data());
  for (size_t i = 0; i < delta_.size(); ++i) {
    TAILOR_RETURN_IF_ERROR(
        t_.finetuned[i]->ReadRawRange(t_.name, byte_off, len, fb));
    T* d = delta_[i].data();
    uint32_t bad_delta = 0;
    for (int64_t j = 0; j < m; ++j) {
      bad |= (fb[j] & 0x7f80u) == 0x7f80u;
      d[j] = static_cast<T>(Bf16ToFloat(fb[j])) - p[j];
      bad_delta |= NonFinite(d[j]);
    }
    if (bad_delta) delta_nonfinite_[i] = true;
  }
  return bad == 0;
}

template <typename T>
absl::Status ChunkReader<T>::NonFiniteInputError() {
  for (size_t s = 0; s <= t_.finetuned.size(); ++s) {
    const Checkpoint& src = s == 0 ? *t_.base : *t_.finetuned[s - 1];
    for (int64_t off = 0; off < t_.numel; off += t_.chunk) {
      const int64_t m = std::min(t_.chunk, t_.numel - off);
      TAILOR_RETURN_IF_ERROR(ReadInto(src, off, m, pre_.data()));
      if (!AllFinite(pre_.data(), m)) {
        return absl::InvalidArgumentError(
            absl::StrCat(t_.name, ": ", s == 0 ? "pre-trained" : "fine-tuned",
                         " tensor contains NaN or Inf"));
      }
    }
  }
  // Read saw one, this scan none: the file changed while it was read.
  return absl::DataLossError(absl::StrCat(
      t_.name, ": an input tensor changed while it was being read"));
}

template <typename T>
absl::Status ChunkReader<T>::ReadBits(int64_t off, int64_t m, size_t task) {
  const uint64_t byte_off = static_cast<uint64_t>(off) * 2;
  const uint64_t len = static_cast<uint64_t>(m) * 2;
  TAILOR_RETURN_IF_ERROR(
      t_.base->ReadRawRange(t_.name, byte_off, len, raw_.data()));
  return t_.finetuned[task]->ReadRawRange(t_.name, byte_off, len,
                                          raw_ft_.data());
}

template <typename T>
absl::Status ChunkReader<T>::ReadInto(const Checkpoint& src, int64_t off,
                                      int64_t m, T* out) {
  const uint64_t byte_off = static_cast<uint64_t>(off) * t_.element_size;
  const uint64_t len = static_cast<uint64_t>(m) * t_.element_size;
  if (t_.stored == kScalar<T>) {
    return src.ReadRawRange(t_.name, byte_off, len, out);
  }
  TAILOR_RETURN_IF_ERROR(src.ReadRawRange(t_.name, byte_off, len, raw_.data()));
  if (t_.stored == at::kBFloat16) {
    const auto* b = reinterpret_cast<const uint16_t*>(raw_.data());
    for (int64_t j = 0; j < m; ++j) {
      out[j] = static_cast<T>(Bf16ToFloat(b[j]));
    }
    return absl::OkStatus();
  }
  // Other floating dtypes: LibTorch's conversion (as Checkpoint::Read).
  at::from_blob(out, {m}, at::TensorOptions().dtype(kScalar<T>))
      .copy_(at::from_blob(raw_.data(), {m},
                           at::TensorOptions().dtype(t_.stored)));
  return absl::OkStatus();
}

template class ChunkReader<float>;
template class ChunkReader<double>;

void Encode(const float* fused, int64_t m, at::ScalarType stored, char* out) {
  if (stored == at::kFloat) {
    std::memcpy(out, fused, static_cast<size_t>(m) * 4);
  } else if (stored == at::kBFloat16) {
    // A NaN as c10::BFloat16 stores it (a delta of finite inputs that
    // overflowed to Inf and -Inf, summed).
    auto* o = reinterpret_cast<uint16_t*>(out);
    for (int64_t j = 0; j < m; ++j) {
      const uint16_t b = FloatToBf16(fused[j]);
      o[j] = fused[j] != fused[j] ? uint16_t{0x7fc0} : b;
    }
  } else {
    at::from_blob(out, {m}, at::TensorOptions().dtype(stored))
        .copy_(at::from_blob(const_cast<float*>(fused), {m},
                             at::TensorOptions().dtype(at::kFloat)));
  }
}

}  // namespace tailor::streamed_internal
