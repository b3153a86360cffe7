#ifndef TAILOR_IO_BIT_PACKING_H_
#define TAILOR_IO_BIT_PACKING_H_

// The packed form of a bool mask that patches store (src/DESIGN.md §3.2):
// row-major flat index i is byte i / 8, bit i % 8 (LSB first, numpy
// packbits(bitorder="little")); the pad bits of the last byte are zero.

#include <ATen/core/Tensor.h>

#include <cstdint>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace tailor {

// Bytes of the packed form of n entries: ceil(n / 8), for any n >= 0
// (no overflow near INT64_MAX).
inline int64_t PackedMaskBytes(int64_t n) { return n / 8 + (n % 8 != 0); }

// Packs a bool mask (any shape, any device), row-major. Returns U8
// [PackedMaskBytes(numel)] on the CPU; LibTorch failures are INTERNAL
// naming `label`.
absl::StatusOr<at::Tensor> PackBits(const at::Tensor& mask,
                                    absl::string_view label);

// Unpacks `packed` (U8 [PackedMaskBytes(n)]) into a bool [n] tensor on the
// CPU and sets *popcount to the number of set bits. INVALID_ARGUMENT naming
// `label` for another dtype or size, or a set pad bit (CheckPadBits).
absl::StatusOr<at::Tensor> UnpackBits(const at::Tensor& packed, int64_t n,
                                      int64_t* popcount,
                                      absl::string_view label);

// The pad-bit rule for a mask of n entries whose last packed byte is
// `last_byte` (nothing to check when n % 8 == 0): INVALID_ARGUMENT naming
// `label`, the byte and the bits, when a bit past the n-th entry is set.
absl::Status CheckPadBits(uint8_t last_byte, int64_t n,
                          absl::string_view label);

// Sets bit `first_bit + i` of `packed` for every i < m with src[i] != 0
// (the other bits are left as they are): appends m entries to a mask packed
// piece by piece. `packed` must hold PackedMaskBytes(first_bit + m) bytes.
void OrBits(const bool* src, int64_t m, int64_t first_bit, char* packed);

// Unpacks entries [first_bit, first_bit + m) of `packed` into dst (0 or 1
// each) and returns how many are set: reads a mask piece by piece.
int64_t UnpackBitRange(const uint8_t* packed, int64_t first_bit, int64_t m,
                       bool* dst);

}  // namespace tailor

#endif  // TAILOR_IO_BIT_PACKING_H_
