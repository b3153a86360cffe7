#ifndef TAILOR_UTIL_DEVICE_STREAM_H_
#define TAILOR_UTIL_DEVICE_STREAM_H_

// One stream per computation on an accelerator (issue #12 point 6): while a
// DeviceStreamScope lives, the calling thread's current stream on `device`
// is one taken from the device's stream pool, so tensors fused at once on
// one GPU by several workers do not serialise on its default stream. On
// leaving, the scope waits for the work queued on that stream, so what the
// thread computed is complete before its device lease is given back.
// Device-generic (c10's virtual guard): on the CPU it does nothing.

#include <ATen/core/TensorBody.h>

#include <optional>

#include "c10/core/Stream.h"
#include "c10/core/StreamGuard.h"

namespace tailor {

class DeviceStreamScope {
 public:
  explicit DeviceStreamScope(const at::Device& device);
  ~DeviceStreamScope();

  DeviceStreamScope(const DeviceStreamScope&) = delete;
  DeviceStreamScope& operator=(const DeviceStreamScope&) = delete;

 private:
  std::optional<c10::Stream> stream_;
  std::optional<c10::StreamGuard> guard_;
};

}  // namespace tailor

#endif  // TAILOR_UTIL_DEVICE_STREAM_H_
