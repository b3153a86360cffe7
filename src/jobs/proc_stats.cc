#include "jobs/proc_stats.h"

#include <sys/stat.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include <fstream>
#include <vector>

#include "absl/status/statusor.h"
#include "util/file_util.h"

namespace tailor::jobs {
namespace {

// The first integer in file `path`, or 0 (missing, "max", unreadable).
int64_t ReadLimit(const char* path) {
  std::ifstream in(path);
  int64_t value = 0;
  if (!(in >> value) || value <= 0) return 0;
  return value;
}

}  // namespace

int64_t HostMemoryBytes() {
  const long pages = ::sysconf(_SC_PHYS_PAGES);
  const long page = ::sysconf(_SC_PAGESIZE);
  int64_t bytes =
      pages > 0 && page > 0 ? static_cast<int64_t>(pages) * page : 0;
  for (const char* path : {"/sys/fs/cgroup/memory.max",
                           "/sys/fs/cgroup/memory/memory.limit_in_bytes"}) {
    const int64_t limit = ReadLimit(path);
    if (limit > 0 && (bytes == 0 || limit < bytes)) bytes = limit;
  }
  return bytes;
}

double ResidentBytes() {
  std::ifstream statm("/proc/self/statm");
  long pages = 0, resident = 0;
  if (!(statm >> pages >> resident)) return 0;
  return static_cast<double>(resident) * ::sysconf(_SC_PAGESIZE);
}

std::optional<uint64_t> FreeBytes(const std::string& path) {
  struct statvfs st;
  if (::statvfs(path.c_str(), &st) != 0) return std::nullopt;
  return static_cast<uint64_t>(st.f_bavail) * st.f_frsize;
}

uint64_t PathBytes(const std::string& path) {
  struct stat st;
  if (::stat(path.c_str(), &st) != 0) return 0;
  if (S_ISREG(st.st_mode)) return static_cast<uint64_t>(st.st_size);
  if (!S_ISDIR(st.st_mode)) return 0;
  uint64_t total = 0;
  absl::StatusOr<std::vector<std::string>> names = ListDirectory(path);
  if (!names.ok()) return 0;
  for (const std::string& n : *names) total += PathBytes(JoinPath(path, n));
  return total;
}

}  // namespace tailor::jobs
