#include "io/tensor_convert.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <cstring>
#include <utility>

#include "absl/strings/str_cat.h"
#include "util/quote.h"
#include "util/status_macros.h"
#include "util/torch_status.h"

namespace tailor {

static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__,
              "safetensors data is little-endian; this host is not");

std::optional<at::ScalarType> ToScalarType(DType dtype) {
  constexpr std::pair<DType, at::ScalarType> kTypes[] = {
      {DType::kBOOL, at::kBool}, {DType::kU8, at::kByte},
      {DType::kI8, at::kChar},   {DType::kI16, at::kShort},
      {DType::kI32, at::kInt},   {DType::kI64, at::kLong},
      {DType::kF16, at::kHalf},  {DType::kBF16, at::kBFloat16},
      {DType::kF32, at::kFloat}, {DType::kF64, at::kDouble},
  };
  for (const auto& [d, type] : kTypes) {
    if (d == dtype) return type;
  }
  return std::nullopt;
}

absl::StatusOr<at::Tensor> ApplyReadOptions(const at::Tensor& tensor,
                                            const ReadOptions& options,
                                            absl::string_view label) {
  return CatchTorch(label, [&]() -> at::Tensor {
    at::Tensor out = tensor;
    if (options.floating_dtype.has_value() && out.is_floating_point() &&
        out.scalar_type() != *options.floating_dtype) {
      out = out.to(*options.floating_dtype);
    }
    if (out.device() != options.device) out = out.to(options.device);
    return out.contiguous();
  });
}

absl::StatusOr<at::Tensor> ReadTensor(const SafetensorsFile& file,
                                      const TensorEntry& entry,
                                      const ReadOptions& options) {
  const std::string label =
      absl::StrCat(file.path(), ": tensor ", Quote(entry.name));
  std::optional<at::ScalarType> type = ToScalarType(entry.dtype);
  if (!type.has_value()) {
    return absl::InvalidArgumentError(absl::StrCat(
        label, ": dtype ", DTypeName(entry.dtype),
        " has no LibTorch type; it can only be copied as raw bytes"));
  }
  TAILOR_ASSIGN_OR_RETURN(at::Tensor raw, CatchTorch(label, [&] {
                            return at::empty(entry.shape,
                                             at::TensorOptions().dtype(*type));
                          }));
  if (entry.nbytes() > 0) {
    TAILOR_RETURN_IF_ERROR(file.ReadRaw(entry, raw.data_ptr()));
  }
  return ApplyReadOptions(raw, options, label);
}

absl::StatusOr<at::Tensor> ToStoredTensor(const at::Tensor& tensor, DType dtype,
                                          absl::string_view label) {
  std::optional<at::ScalarType> type = ToScalarType(dtype);
  if (!type.has_value()) {
    return absl::InvalidArgumentError(
        absl::StrCat(label, ": cannot store a LibTorch tensor as ",
                     DTypeName(dtype), "; pass raw bytes instead"));
  }
  return CatchTorch(label,
                    [&] { return tensor.to(at::kCPU, *type).contiguous(); });
}

}  // namespace tailor
