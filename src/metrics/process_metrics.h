#ifndef TAILOR_METRICS_PROCESS_METRICS_H_
#define TAILOR_METRICS_PROCESS_METRICS_H_

// The standard process_* families of the Prometheus client libraries
// (https://prometheus.io/docs/instrumenting/writing_clientlibs/#process-metrics),
// read from /proc/self at every scrape (Linux).

#include <cstdint>
#include <optional>

#include "absl/strings/string_view.h"
#include "metrics/registry.h"

namespace tailor::metrics {

// Registers process_cpu_seconds_total, process_resident_memory_bytes,
// process_virtual_memory_bytes, process_start_time_seconds,
// process_open_fds and process_max_fds on `registry`, with a collector
// that refreshes them before every Render(). A value that cannot be read
// (no /proc) is left out of that scrape rather than exported wrong.
void AddProcessMetrics(Registry* registry);

// The fields of /proc/PID/stat that the families use (exposed for tests).
struct ProcStat {
  uint64_t utime_ticks = 0, stime_ticks = 0;  // fields 14, 15
  uint64_t start_ticks = 0;                   // field 22: since boot
  uint64_t vsize_bytes = 0;                   // field 23
  int64_t rss_pages = 0;                      // field 24
};
// Parses one /proc/PID/stat line. The command name (field 2) may hold
// spaces and parentheses; fields are counted after its last ')'.
std::optional<ProcStat> ParseProcStat(absl::string_view line);
// The "btime" (boot time, Unix seconds) of a /proc/stat text.
std::optional<int64_t> ParseBootTime(absl::string_view proc_stat);

}  // namespace tailor::metrics

#endif  // TAILOR_METRICS_PROCESS_METRICS_H_
