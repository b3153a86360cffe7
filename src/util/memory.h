#ifndef TAILOR_UTIL_MEMORY_H_
#define TAILOR_UTIL_MEMORY_H_

namespace tailor {

// Process-wide glibc allocator policies. The first one a process asks for
// stays; later calls of either are no-ops. Only a binary's main (or the
// command it runs) picks one: library code, jobs included, never does
// (tailorctl fuse / apply-patch and tailord pick streaming, tailorctl demo
// reuse). Thread-safe.

// For streaming large models: large allocations go straight to mmap and
// back to the OS on free. glibc raises its mmap threshold dynamically (up to
// 32 MiB) after large blocks are freed; tensors of a few MiB then land on the
// heap, fragment it, and resident memory creeps up tensor after tensor
// (measured: +260 MiB over 64 tensors of 8 MiB). Pinning the threshold at
// 128 KiB keeps peak RSS at one tensor's working set, whatever the model
// size.
void ConfigureAllocatorForStreaming();

// For small models whose same-sized activations are allocated and freed
// over and over (tailorctl demo: training, evaluation, many small fusion
// jobs): blocks up to 32 MiB (glibc's ceiling) stay in the heap and up to
// 1 GiB of freed memory stays mapped, instead of an mmap + munmap, page
// faults and zeroing per block, which cost more than the arithmetic there.
// Raises the resident high-water mark by at most the trim threshold.
void ConfigureAllocatorForReuse();

}  // namespace tailor

#endif  // TAILOR_UTIL_MEMORY_H_
