#ifndef TAILOR_IO_TENSOR_CONVERT_H_
#define TAILOR_IO_TENSOR_CONVERT_H_

#include <ATen/core/Tensor.h>

#include <optional>
#include <string>

#include "absl/status/statusor.h"
#include "io/dtype.h"
#include "io/safetensors_file.h"
#include "io/tensor_source.h"

namespace tailor {

// LibTorch's type for a safetensors dtype; nullopt where LibTorch 1.13 has
// none (U16, U32, U64, F8_E4M3, F8_E5M2).
std::optional<at::ScalarType> ToScalarType(DType dtype);

// Reads `entry` of `file` into a new CPU tensor of the stored type with one
// pread straight into the tensor's storage, then converts it per `options`.
absl::StatusOr<at::Tensor> ReadTensor(const SafetensorsFile& file,
                                      const TensorEntry& entry,
                                      const ReadOptions& options);

// Applies `options` (floating conversion, device) to a CPU tensor.
absl::StatusOr<at::Tensor> ApplyReadOptions(const at::Tensor& tensor,
                                            const ReadOptions& options,
                                            absl::string_view label);

// `tensor` as a contiguous CPU tensor of `dtype`'s LibTorch type, ready to be
// written byte for byte (narrowing float conversions round to nearest even).
// INVALID_ARGUMENT if `dtype` has no LibTorch type.
absl::StatusOr<at::Tensor> ToStoredTensor(const at::Tensor& tensor, DType dtype,
                                          absl::string_view label);

}  // namespace tailor

#endif  // TAILOR_IO_TENSOR_CONVERT_H_
