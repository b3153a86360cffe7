#include "io/bit_packing.h"

#include <ATen/ATen.h>

#include "absl/strings/str_cat.h"
#include "util/status_macros.h"
#include "util/torch_status.h"

namespace tailor {

absl::StatusOr<at::Tensor> PackBits(const at::Tensor& mask,
                                    absl::string_view label) {
  return CatchTorch(label, [&]() -> at::Tensor {
    const at::Tensor flat = mask.reshape({-1}).to(at::kCPU).contiguous();
    const int64_t n = flat.numel();
    at::Tensor packed = at::empty({PackedMaskBytes(n)}, at::kByte);
    // A bool tensor holds one byte per entry, 0 or 1.
    const uint8_t* src =
        reinterpret_cast<const uint8_t*>(flat.data_ptr<bool>());
    uint8_t* dst = packed.data_ptr<uint8_t>();
    const int64_t full = n / 8;
    for (int64_t j = 0; j < full; ++j) {
      const uint8_t* s = src + 8 * j;
      dst[j] = static_cast<uint8_t>((s[0] != 0) | (s[1] != 0) << 1 |
                                    (s[2] != 0) << 2 | (s[3] != 0) << 3 |
                                    (s[4] != 0) << 4 | (s[5] != 0) << 5 |
                                    (s[6] != 0) << 6 | (s[7] != 0) << 7);
    }
    if (n % 8 != 0) {
      uint8_t b = 0;
      for (int64_t i = 8 * full; i < n; ++i) {
        b |= static_cast<uint8_t>((src[i] != 0) << (i % 8));
      }
      dst[full] = b;
    }
    return packed;
  });
}

absl::Status CheckPadBits(uint8_t last_byte, int64_t n,
                          absl::string_view label) {
  if (n % 8 == 0) return absl::OkStatus();
  const int used = static_cast<int>(n % 8);
  if ((last_byte >> used) != 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        label, ": pad bits of the last mask byte (bits ", used, "..7 of byte ",
        n / 8, " = 0x", absl::Hex(last_byte, absl::kZeroPad2),
        ") must be zero; the mask covers ", n, " entries"));
  }
  return absl::OkStatus();
}

absl::StatusOr<at::Tensor> UnpackBits(const at::Tensor& packed, int64_t n,
                                      int64_t* popcount,
                                      absl::string_view label) {
  if (packed.scalar_type() != at::kByte || packed.dim() != 1 ||
      packed.numel() != PackedMaskBytes(n)) {
    return absl::InvalidArgumentError(
        absl::StrCat(label, ": mask must be U8 [", PackedMaskBytes(n), "]"));
  }
  TAILOR_ASSIGN_OR_RETURN(at::Tensor out, CatchTorch(label, [&] {
                            return at::empty({n}, at::kBool);
                          }));
  const at::Tensor src_t = packed.contiguous();
  const uint8_t* src = src_t.data_ptr<uint8_t>();
  uint8_t* dst = reinterpret_cast<uint8_t*>(out.data_ptr<bool>());
  int64_t count = 0;
  const int64_t full = n / 8;
  for (int64_t j = 0; j < full; ++j) {
    const uint8_t b = src[j];
    count += __builtin_popcount(b);
    uint8_t* d = dst + 8 * j;
    for (int k = 0; k < 8; ++k) d[k] = (b >> k) & 1;
  }
  if (n % 8 != 0) {
    const uint8_t b = src[full];
    TAILOR_RETURN_IF_ERROR(CheckPadBits(b, n, label));
    count += __builtin_popcount(b);
    for (int k = 0; k < n % 8; ++k) dst[8 * full + k] = (b >> k) & 1;
  }
  *popcount = count;
  return out;
}

void OrBits(const bool* src, int64_t m, int64_t first_bit, char* packed) {
  // A bool holds one byte, 0 or 1.
  const uint8_t* s = reinterpret_cast<const uint8_t*>(src);
  int64_t bit = first_bit;
  for (int64_t i = 0; i < m; ++i, ++bit) {
    if (s[i]) {
      packed[static_cast<size_t>(bit >> 3)] |=
          static_cast<char>(1u << (bit & 7));
    }
  }
}

int64_t UnpackBitRange(const uint8_t* packed, int64_t first_bit, int64_t m,
                       bool* dst) {
  uint8_t* d = reinterpret_cast<uint8_t*>(dst);
  int64_t count = 0;
  for (int64_t i = 0; i < m; ++i) {
    const int64_t bit = first_bit + i;
    const uint8_t v = (packed[bit >> 3] >> (bit & 7)) & 1;
    d[i] = v;
    count += v;
  }
  return count;
}

}  // namespace tailor
