#include "metrics/remote_metrics.h"

#include <atomic>
#include <cstdint>
#include <utility>
#include <vector>

#include "storage/remote_stats.h"

namespace tailor::metrics {

void AddRemoteMetrics(Registry* registry) {
  RemoteStats& stats = GlobalRemoteStats();
  const std::pair<const char*, const char*> specs[] = {
      {"tailor_remote_read_bytes_total",
       "Bytes received from remote object stores (s3, https, hf)."},
      {"tailor_remote_written_bytes_total",
       "Bytes sent to remote object stores (uploads)."},
      {"tailor_remote_requests_total",
       "HTTP requests sent to remote object stores, retries included."},
      {"tailor_remote_retries_total",
       "Remote requests that were attempts after the first."},
      {"tailor_remote_failures_total",
       "Remote requests that failed for good (after their retries)."},
      {"tailor_cache_hit_bytes_total",
       "Bytes of remote objects served by the local read cache."},
      {"tailor_cache_miss_bytes_total",
       "Bytes of remote objects downloaded into the local read cache."},
  };
  const std::atomic<uint64_t>* values[] = {
      &stats.read_bytes,      &stats.written_bytes, &stats.requests,
      &stats.retries,         &stats.failures,      &stats.cache_hit_bytes,
      &stats.cache_miss_bytes};
  std::vector<std::pair<Family*, const std::atomic<uint64_t>*>> families;
  for (size_t i = 0; i < sizeof(values) / sizeof(values[0]); ++i) {
    Family* f = registry->AddCounter(specs[i].first, specs[i].second);
    f->Set({}, static_cast<double>(values[i]->load()));
    families.emplace_back(f, values[i]);
  }
  registry->AddCollector([families] {
    for (const auto& [family, value] : families) {
      family->Set({}, static_cast<double>(value->load()));
    }
  });
}

}  // namespace tailor::metrics
