#include "util/cpu_tuning.h"

#include <dlfcn.h>

namespace tailor {

bool SetBlasThreads(int n) {
  using SetThreads = void (*)(int);
  void* symbol = ::dlsym(RTLD_DEFAULT, "openblas_set_num_threads");
  if (symbol == nullptr || n < 1) return false;
  reinterpret_cast<SetThreads>(symbol)(n);
  return true;
}

}  // namespace tailor
