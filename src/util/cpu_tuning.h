#ifndef TAILOR_UTIL_CPU_TUNING_H_
#define TAILOR_UTIL_CPU_TUNING_H_

namespace tailor {

// Sets how many threads the BLAS library under LibTorch's CPU matmuls uses.
// Debian's LibTorch calls the system BLAS; OpenBLAS keeps its own pool,
// which LibTorch's at::set_num_threads does not size, so concurrent
// single-threaded jobs oversubscribe the cores (and OpenBLAS spins). Looks
// openblas_set_num_threads up at run time; returns false (and changes
// nothing) when the loaded BLAS has no such knob. n >= 1.
bool SetBlasThreads(int n);

}  // namespace tailor

#endif  // TAILOR_UTIL_CPU_TUNING_H_
