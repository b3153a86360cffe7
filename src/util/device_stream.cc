#include "util/device_stream.h"

#include "c10/core/impl/VirtualGuardImpl.h"
#include "c10/util/Exception.h"

namespace tailor {

DeviceStreamScope::DeviceStreamScope(const at::Device& device) {
  if (device.is_cpu()) return;
  c10::impl::VirtualGuardImpl impl(device.type());
  stream_ = impl.getStreamFromGlobalPool(device);
  guard_.emplace(*stream_);
}

DeviceStreamScope::~DeviceStreamScope() {
  if (!stream_) return;
  try {
    c10::impl::VirtualGuardImpl(stream_->device_type())
        .synchronizeStream(*stream_);
  } catch (const c10::Error&) {
    // A failed kernel has already surfaced as the computation's error; a
    // destructor must not throw.
  }
  guard_.reset();
}

}  // namespace tailor
