#ifndef TAILOR_UTIL_CPU_TUNING_H_
#define TAILOR_UTIL_CPU_TUNING_H_

#include <string>

namespace tailor {

// Sets how many threads the BLAS library under LibTorch's CPU matmuls uses.
// Debian's LibTorch calls the system BLAS; OpenBLAS keeps its own pool,
// which LibTorch's at::set_num_threads does not size, so concurrent
// single-threaded jobs oversubscribe the cores (and OpenBLAS spins). Looks
// openblas_set_num_threads up at run time; returns false (and changes
// nothing) when the loaded BLAS has no such knob. n >= 1.
bool SetBlasThreads(int n);

// The CPUs this process may use: the cgroup's CPU quota (cgroup v2
// cpu.max, else v1 cpu.cfs_quota_us / cpu.cfs_period_us), rounded up, and
// at most the CPUs in its affinity mask; at least 1. `cgroup_root` is where
// the cgroup file system is mounted (a parameter for tests).
int AvailableCpus(const std::string& cgroup_root = "/sys/fs/cgroup");

// What ConfigureComputeThreads settled on.
struct ComputeThreads {
  int blas = 1;  // OpenBLAS's pool (GEMM, Cholesky, triangular inverse)
  int aten = 1;  // LibTorch's intra-op pool
  bool blas_sized = false;  // false: the BLAS has no thread knob
  int workers = 1;          // worker slots: tensors a job computes at once
};

// Sizes the compute threads of the whole process, once, from a binary's
// main (`--threads`; 0 = AvailableCpus()): one pool does the parallel work.
// The fusion kernels spend their time in BLAS/LAPACK calls (the lazy OBS
// update, Cholesky, triangular inverse), so OpenBLAS's pool gets n threads
// and LibTorch's intra-op pool 1: two pools that each spin while waiting
// for work (OpenMP's and OpenBLAS's) otherwise fight over the cores (a
// 2-thread run on 2 cores took 7x a 1-thread one). When the BLAS has no
// thread knob, LibTorch's pool gets the n threads instead. Library code
// never calls this. (Defined in util/compute_threads.cc, part of tailor_io:
// it needs LibTorch.)
//
// `workers` splits the n threads into worker slots (RunOptions::workers):
// 0 means one worker per thread. Each worker gets max(1, n / workers)
// threads: OpenBLAS's pool is sized to that share (a 1-thread OpenBLAS
// runs in the calling thread, so workers never queue on its shared pool)
// and LibTorch's pool stays 1 (or gets the share when the BLAS has no
// knob). So `--threads 2` alone gives 2 workers of 1 thread, and
// `--threads 4 --workers 2` 2 workers of 2 BLAS threads.
ComputeThreads ConfigureComputeThreads(int threads, int workers = 1);

}  // namespace tailor

#endif  // TAILOR_UTIL_CPU_TUNING_H_
