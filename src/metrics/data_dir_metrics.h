#ifndef TAILOR_METRICS_DATA_DIR_METRICS_H_
#define TAILOR_METRICS_DATA_DIR_METRICS_H_

// Space of the server's data directory: the volume's size and free space,
// the bytes the data directory and its journals use, and the space journals
// may still take.

#include <cstdint>
#include <string>

#include "absl/time/time.h"
#include "metrics/registry.h"

namespace tailor::metrics {

struct DataDirMetricsOptions {
  std::string data_dir;
  std::string journal_dir;  // inside data_dir
  // Journal writes leave this much free space (JobManagerOptions).
  uint64_t journal_reserve_bytes = 0;
  // The directory walks are redone at most this often; statvfs runs at
  // every scrape.
  absl::Duration walk_interval = absl::Seconds(10);
  // A walk stops after this many entries (the usage is then a lower
  // bound), so a scrape's cost stays bounded whatever the directory holds.
  int64_t max_walk_entries = 1000000;
};

// Registers, with a collector run before every Render():
//   tailor_data_volume_size_bytes   statvfs f_blocks * f_frsize
//   tailor_data_volume_free_bytes   statvfs f_bavail * f_frsize (what the
//                                   unprivileged server may still write)
//   tailor_data_dir_used_bytes      disk usage (st_blocks) of data_dir
//   tailor_journal_used_bytes       disk usage of journal_dir
//   tailor_journal_free_bytes       free bytes above journal_reserve_bytes
// A value that cannot be read (the directory is gone) keeps the last value
// read, if any.
void AddDataDirMetrics(Registry* registry, DataDirMetricsOptions options);

// Disk usage (allocated 512-byte blocks) of the files under `dir`, not
// following symbolic links nor crossing into other file systems; at most
// `max_entries` entries are counted. Returns -1 when `dir` cannot be read.
// Exposed for tests.
int64_t DiskUsageBytes(const std::string& dir, int64_t max_entries);

}  // namespace tailor::metrics

#endif  // TAILOR_METRICS_DATA_DIR_METRICS_H_
