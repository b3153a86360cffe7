#include "util/memory.h"

#include <mutex>

#if defined(__GLIBC__)
#include <malloc.h>
#endif

namespace tailor {
namespace {

std::once_flag policy_chosen;

}  // namespace

void ConfigureAllocatorForStreaming() {
  std::call_once(policy_chosen, [] {
#if defined(__GLIBC__)
    mallopt(M_MMAP_THRESHOLD, 128 * 1024);
#endif
  });
}

void ConfigureAllocatorForReuse() {
  std::call_once(policy_chosen, [] {
#if defined(__GLIBC__)
    // Either alone barely helps (measured): a trim threshold alone pins the
    // mmap threshold at its 128 KiB default.
    mallopt(M_MMAP_THRESHOLD, 32 << 20);
    mallopt(M_TRIM_THRESHOLD, 1 << 30);
#endif
  });
}

}  // namespace tailor
