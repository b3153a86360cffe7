#ifndef TAILOR_TESTS_TESTING_TEST_DEVICE_H_
#define TAILOR_TESTS_TESTING_TEST_DEVICE_H_

#include <c10/core/Device.h>

#include <string>

#include "absl/status/statusor.h"

namespace tailor::testing {

// The device that device-generic test cases compute on, from the
// environment variable TAILOR_TEST_DEVICE: unset or empty means "cpu";
// otherwise anything ResolveDevice (util/device.h) accepts ("cpu", "cuda",
// "cuda:N", "auto"). scripts/gpu-check sets it to "cuda". A CUDA device
// asked for where LibTorch sees none is an error (FAILED_PRECONDITION),
// never a silent fall back to the CPU.
absl::StatusOr<c10::Device> TestDeviceFrom(const char* env_value);

// TestDeviceFrom(getenv("TAILOR_TEST_DEVICE")); on error the calling test
// fails (ADD_FAILURE naming the variable) and the CPU is returned.
c10::Device TestDevice();

// TestDevice() as a FusionSpec::device string ("cpu", "cuda:0").
std::string TestDeviceName();

}  // namespace tailor::testing

#endif  // TAILOR_TESTS_TESTING_TEST_DEVICE_H_
