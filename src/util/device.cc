#include "util/device.h"

#include <ATen/Context.h>

#include <cstdlib>

#include "absl/strings/str_cat.h"

namespace tailor {

absl::StatusOr<at::Device> ResolveDevice(const std::string& device) {
  if (device == "cpu") return at::Device(at::kCPU);
  if (device == "auto") {
    return at::hasCUDA() ? at::Device(at::kCUDA, 0) : at::Device(at::kCPU);
  }
  if (device != "cuda" && device.rfind("cuda:", 0) != 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "bad device '", device, "': must be auto, cpu, cuda or cuda:N"));
  }
  int index = 0;
  if (device.size() > 5) {
    char* end = nullptr;
    const long parsed = std::strtol(device.c_str() + 5, &end, 10);
    if (*end != '\0' || parsed < 0 || parsed > 1024) {
      return absl::InvalidArgumentError(absl::StrCat(
          "bad device '", device, "': must be auto, cpu, cuda or cuda:N"));
    }
    index = static_cast<int>(parsed);
  }
  if (!at::hasCUDA()) {
    return absl::FailedPreconditionError(absl::StrCat(
        "device '", device, "' requested but no CUDA device is available"));
  }
  return at::Device(at::kCUDA, static_cast<c10::DeviceIndex>(index));
}

}  // namespace tailor
