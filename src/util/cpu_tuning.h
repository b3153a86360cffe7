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

// For processes that allocate and free the same large tensors over and over
// (training, evaluation loops): keeps allocations up to 32 MiB (glibc's
// ceiling) in the heap and up to 1 GiB of freed memory mapped, instead of
// glibc's default of mmap + munmap per large block, whose page faults and
// zeroing cost more than the arithmetic on small models. Raises the resident
// high-water mark by at most the trim threshold; not for the long-running
// service.
void KeepLargeAllocationsMapped();

}  // namespace tailor

#endif  // TAILOR_UTIL_CPU_TUNING_H_
