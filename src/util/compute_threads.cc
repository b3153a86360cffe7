// ConfigureComputeThreads (declared in the torch-free util/cpu_tuning.h):
// here because it sizes LibTorch's pool, so it lives in tailor_io.
#include <ATen/Parallel.h>

#include <algorithm>

#include "util/cpu_tuning.h"

namespace tailor {

ComputeThreads ConfigureComputeThreads(int threads, int workers) {
  ComputeThreads out;
  const int total = threads > 0 ? threads : AvailableCpus();
  out.workers = workers > 0 ? workers : total;
  const int n = std::max(1, total / out.workers);
  out.blas_sized = SetBlasThreads(n);
  out.blas = out.blas_sized ? n : 1;
  out.aten = out.blas_sized ? 1 : n;
  at::set_num_threads(out.aten);
  return out;
}

}  // namespace tailor
