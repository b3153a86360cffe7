#ifndef TAILOR_IO_TENSOR_SOURCE_H_
#define TAILOR_IO_TENSOR_SOURCE_H_

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "io/dtype.h"

namespace tailor {

// What a checkpoint says about one tensor, without reading it.
struct TensorInfo {
  std::string name;
  DType dtype = DType::kF32;
  std::vector<int64_t> shape;
  int64_t numel = 0;
  uint64_t nbytes = 0;
  std::string file;  // file holding it, relative to the checkpoint directory
};

struct ReadOptions {
  // Floating tensors (F16, BF16, F32, F64) are converted to this type;
  // nullopt keeps the stored type. Other tensors always keep their type.
  std::optional<at::ScalarType> floating_dtype = at::kFloat;
  // Where the returned tensor lives.
  at::Device device = at::kCPU;
};

// A read-only, lazily read set of named tensors: a safetensors checkpoint, or
// a fine-tuned view such as base + LoRA adapter. Nothing is read until
// Read(); each call reads one tensor, so memory stays bounded by the largest
// tensor, never the model.
//
// Thread-safe: implementations allow concurrent Read() calls.
class TensorSource {
 public:
  virtual ~TensorSource() = default;

  // Every tensor, sorted by name.
  virtual const std::vector<TensorInfo>& tensors() const = 0;

  // Reads one tensor as a contiguous tensor per `options`. NOT_FOUND for an
  // unknown name; INVALID_ARGUMENT for a dtype LibTorch cannot represent
  // (U16/U32/U64/F8: use ReadRaw).
  virtual absl::StatusOr<at::Tensor> Read(absl::string_view name,
                                          const ReadOptions& options) const = 0;
  // Read() with default options (floating tensors as float32, on the CPU).
  absl::StatusOr<at::Tensor> Read(absl::string_view name) const {
    return Read(name, ReadOptions());
  }

  // The tensor's bytes in its stored dtype (little-endian, row-major).
  virtual absl::StatusOr<std::string> ReadRaw(absl::string_view name) const = 0;

  // A human-readable name for messages (usually the path).
  virtual const std::string& description() const = 0;

  // Binary search in tensors(); nullptr if absent.
  const TensorInfo* Find(absl::string_view name) const;
  // Sum of nbytes over tensors().
  uint64_t TotalBytes() const;
};

}  // namespace tailor

#endif  // TAILOR_IO_TENSOR_SOURCE_H_
