#ifndef TAILOR_JOBS_PROC_STATS_H_
#define TAILOR_JOBS_PROC_STATS_H_

// Sizes the job service reads from the operating system (Linux: /proc,
// /sys/fs/cgroup, statvfs): memory for the device pool and the metrics,
// disk space for journals and the written-bytes metric. Each returns 0 (or
// nullopt) when the figure is unknown; none fails.

#include <cstdint>
#include <optional>
#include <string>

namespace tailor::jobs {

// Physical RAM, or the process's cgroup memory limit (v2, else v1) when that
// is lower (a container); 0 if unknown.
int64_t HostMemoryBytes();

// Resident set size of this process (/proc/self/statm), bytes; 0 if unknown.
double ResidentBytes();

// Free bytes of the file system holding `path` (for an unprivileged
// writer); nullopt if unknown.
std::optional<uint64_t> FreeBytes(const std::string& path);

// Bytes of the regular file `path`, or of every regular file below the
// directory `path`; 0 for anything else or on errors.
uint64_t PathBytes(const std::string& path);

}  // namespace tailor::jobs

#endif  // TAILOR_JOBS_PROC_STATS_H_
