#include "util/cpu_tuning.h"

#include <dlfcn.h>
#include <malloc.h>

namespace tailor {

bool SetBlasThreads(int n) {
  using SetThreads = void (*)(int);
  void* symbol = ::dlsym(RTLD_DEFAULT, "openblas_set_num_threads");
  if (symbol == nullptr || n < 1) return false;
  reinterpret_cast<SetThreads>(symbol)(n);
  return true;
}

void KeepLargeAllocationsMapped() {
  // Either alone barely helps (measured): a trim threshold alone pins the
  // mmap threshold at its 128 KiB default.
  ::mallopt(M_MMAP_THRESHOLD, 32 << 20);
  ::mallopt(M_TRIM_THRESHOLD, 1 << 30);
}

}  // namespace tailor
