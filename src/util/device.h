#ifndef TAILOR_UTIL_DEVICE_H_
#define TAILOR_UTIL_DEVICE_H_

#include <ATen/core/TensorBody.h>

#include <string>

#include "absl/status/statusor.h"

namespace tailor {

// Parses a device preference: "cpu", "cuda" (device 0), "cuda:N", or "auto"
// (the first CUDA device when LibTorch sees one, else the CPU).
// FAILED_PRECONDITION for a CUDA device when none is available;
// INVALID_ARGUMENT for anything else.
absl::StatusOr<at::Device> ResolveDevice(const std::string& device);

}  // namespace tailor

#endif  // TAILOR_UTIL_DEVICE_H_
