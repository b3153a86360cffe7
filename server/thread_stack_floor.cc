// A floor under the stack size that libraries request for their threads.
//
// civetweb (Debian's libcivetweb 1.15) creates its threads with a fixed
// 100 KiB stack. glibc carves every thread's static TLS out of its stack,
// and in tailord that TLS is about 105 KiB (OpenBLAS 60 KiB, glog 30 KiB,
// LibTorch 10 KiB, ...), so pthread_create fails with EINVAL and the
// metrics endpoint cannot start ("Cannot create threads"). Defining
// pthread_attr_setstacksize in the executable interposes on the calls
// libraries make through the PLT; requests below kFloor are raised to it,
// larger ones pass through unchanged. Linked into tailord only.

#include <dlfcn.h>
#include <pthread.h>

#include <algorithm>
#include <cstddef>

namespace {

constexpr size_t kFloor = size_t{1} << 20;  // 1 MiB

using SetStackSize = int (*)(pthread_attr_t*, size_t);

SetStackSize Real() {
  static const SetStackSize real = reinterpret_cast<SetStackSize>(
      ::dlsym(RTLD_NEXT, "pthread_attr_setstacksize"));
  return real;
}

}  // namespace

extern "C" int pthread_attr_setstacksize(pthread_attr_t* attr,
                                         size_t stacksize) noexcept {
  return Real()(attr, std::max(stacksize, kFloor));
}
