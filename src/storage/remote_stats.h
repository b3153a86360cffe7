#ifndef TAILOR_STORAGE_REMOTE_STATS_H_
#define TAILOR_STORAGE_REMOTE_STATS_H_

// Process-wide counters of remote object traffic (issue #16 point 7), kept
// by the storage layer and exported by tailord's metrics
// (tailor_remote_*_total). Lock-free; monotonic.

#include <atomic>
#include <cstdint>

namespace tailor {

struct RemoteStats {
  std::atomic<uint64_t> read_bytes{0};        // response body bytes received
  std::atomic<uint64_t> written_bytes{0};     // request body bytes sent
  std::atomic<uint64_t> requests{0};          // HTTP requests sent (attempts)
  std::atomic<uint64_t> retries{0};           // attempts after the first
  std::atomic<uint64_t> failures{0};          // requests that failed for good
  std::atomic<uint64_t> cache_hit_bytes{0};   // bytes served by the cache
  std::atomic<uint64_t> cache_miss_bytes{0};  // bytes fetched into it
};

// The one instance.
inline RemoteStats& GlobalRemoteStats() {
  static RemoteStats stats;
  return stats;
}

}  // namespace tailor

#endif  // TAILOR_STORAGE_REMOTE_STATS_H_
