#ifndef TAILOR_METRICS_REMOTE_METRICS_H_
#define TAILOR_METRICS_REMOTE_METRICS_H_

#include "metrics/registry.h"

namespace tailor::metrics {

// Remote object traffic (issue #16), mirrored from the process-wide
// storage/remote_stats.h counters at every scrape, each present (0) from
// the start:
//   tailor_remote_read_bytes_total, tailor_remote_written_bytes_total,
//   tailor_remote_requests_total, tailor_remote_retries_total,
//   tailor_remote_failures_total, tailor_cache_hit_bytes_total,
//   tailor_cache_miss_bytes_total.
void AddRemoteMetrics(Registry* registry);

}  // namespace tailor::metrics

#endif  // TAILOR_METRICS_REMOTE_METRICS_H_
