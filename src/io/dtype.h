#ifndef TAILOR_IO_DTYPE_H_
#define TAILOR_IO_DTYPE_H_

#include <cstddef>
#include <optional>
#include <string>

#include "absl/strings/string_view.h"

namespace tailor {

// Element types of the safetensors format (the spelling in the header is
// the enumerator name without the leading k, e.g. "BF16").
enum class DType {
  kBOOL,
  kU8,
  kI8,
  kI16,
  kU16,
  kI32,
  kU32,
  kI64,
  kU64,
  kF8_E4M3,
  kF8_E5M2,
  kF16,
  kBF16,
  kF32,
  kF64,
};

// Parses a header dtype string; nullopt if unknown.
std::optional<DType> ParseDType(absl::string_view name);
// The header spelling, e.g. "BF16".
absl::string_view DTypeName(DType dtype);
// Bytes per element.
size_t DTypeSize(DType dtype);
// True for F16, BF16, F32, F64 (the types fusion computes on). The 8-bit
// float formats are passed through untouched.
bool IsFloatingDType(DType dtype);

}  // namespace tailor

#endif  // TAILOR_IO_DTYPE_H_
