#ifndef TAILOR_UTIL_PARALLEL_FOR_H_
#define TAILOR_UTIL_PARALLEL_FOR_H_

// A small fan-out: independent items on a few threads. Torch-free.

#include <cstddef>
#include <functional>

namespace tailor {

// Runs body(i) for every i in [0, n), each exactly once, on
// max(1, min(workers, n)) threads: the calling thread and workers - 1 more,
// each taking the next index not yet taken. Returns when every call has
// returned. With workers <= 1 the calls run in index order on the calling
// thread (no threads are created). `body` must be safe to call
// concurrently for different indices; it reports its own errors (write
// them to a slot per index).
void ParallelFor(size_t n, int workers,
                 const std::function<void(size_t)>& body);

}  // namespace tailor

#endif  // TAILOR_UTIL_PARALLEL_FOR_H_
