#include "testing/test_device.h"

#include <gtest/gtest.h>

#include <cstdlib>

#include "util/device.h"

namespace tailor::testing {

absl::StatusOr<c10::Device> TestDeviceFrom(const char* env_value) {
  if (env_value == nullptr || *env_value == '\0') return c10::Device("cpu");
  return ResolveDevice(env_value);
}

c10::Device TestDevice() {
  absl::StatusOr<c10::Device> device =
      TestDeviceFrom(std::getenv("TAILOR_TEST_DEVICE"));
  if (!device.ok()) {
    ADD_FAILURE() << "TAILOR_TEST_DEVICE: " << device.status();
    return c10::Device("cpu");
  }
  return *device;
}

std::string TestDeviceName() { return TestDevice().str(); }

}  // namespace tailor::testing
