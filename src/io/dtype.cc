#include "io/dtype.h"

#include <array>

namespace tailor {
namespace {

struct DTypeRow {
  DType dtype;
  absl::string_view name;
  size_t size;
};

constexpr std::array<DTypeRow, 15> kDTypes = {{
    {DType::kBOOL, "BOOL", 1},
    {DType::kU8, "U8", 1},
    {DType::kI8, "I8", 1},
    {DType::kI16, "I16", 2},
    {DType::kU16, "U16", 2},
    {DType::kI32, "I32", 4},
    {DType::kU32, "U32", 4},
    {DType::kI64, "I64", 8},
    {DType::kU64, "U64", 8},
    {DType::kF8_E4M3, "F8_E4M3", 1},
    {DType::kF8_E5M2, "F8_E5M2", 1},
    {DType::kF16, "F16", 2},
    {DType::kBF16, "BF16", 2},
    {DType::kF32, "F32", 4},
    {DType::kF64, "F64", 8},
}};

const DTypeRow& Row(DType dtype) { return kDTypes[static_cast<size_t>(dtype)]; }

}  // namespace

std::optional<DType> ParseDType(absl::string_view name) {
  for (const DTypeRow& row : kDTypes) {
    if (row.name == name) return row.dtype;
  }
  return std::nullopt;
}

absl::string_view DTypeName(DType dtype) { return Row(dtype).name; }

size_t DTypeSize(DType dtype) { return Row(dtype).size; }

bool IsFloatingDType(DType dtype) {
  return dtype == DType::kF16 || dtype == DType::kBF16 ||
         dtype == DType::kF32 || dtype == DType::kF64;
}

}  // namespace tailor
