#include "metrics/data_dir_metrics.h"

#include <dirent.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include <algorithm>
#include <memory>
#include <optional>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"

namespace tailor::metrics {
namespace {

constexpr int kMaxDepth = 64;

// Adds the usage of the entries of directory `fd` (which it closes) to
// *total; counts entries in *entries.
void Walk(int fd, dev_t device, int depth, int64_t max_entries,
          int64_t* entries, int64_t* total) {
  DIR* dir = ::fdopendir(fd);
  if (dir == nullptr) {
    ::close(fd);
    return;
  }
  while (const dirent* e = ::readdir(dir)) {
    const std::string name = e->d_name;
    if (name == "." || name == "..") continue;
    if (++*entries > max_entries) break;
    struct stat st;
    if (::fstatat(::dirfd(dir), name.c_str(), &st, AT_SYMLINK_NOFOLLOW) != 0) {
      continue;  // removed meanwhile
    }
    *total += static_cast<int64_t>(st.st_blocks) * 512;
    if (S_ISDIR(st.st_mode) && st.st_dev == device && depth < kMaxDepth) {
      const int child =
          ::openat(::dirfd(dir), name.c_str(),
                   O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
      if (child >= 0)
        Walk(child, device, depth + 1, max_entries, entries, total);
    }
  }
  ::closedir(dir);
}

}  // namespace

int64_t DiskUsageBytes(const std::string& dir, int64_t max_entries) {
  const int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) return -1;
  struct stat st;
  if (::fstat(fd, &st) != 0) {
    ::close(fd);
    return -1;
  }
  int64_t entries = 0;
  int64_t total = static_cast<int64_t>(st.st_blocks) * 512;
  Walk(fd, st.st_dev, 0, max_entries, &entries, &total);
  return total;
}

void AddDataDirMetrics(Registry* registry, DataDirMetricsOptions options) {
  struct State {
    DataDirMetricsOptions options;
    Family *size, *free, *dir_used, *journal_used, *journal_free;
    absl::Mutex mu;  // guards the cache below
    absl::Time walked ABSL_GUARDED_BY(mu) = absl::InfinitePast();
    int64_t dir_bytes ABSL_GUARDED_BY(mu) = -1;
    int64_t journal_bytes ABSL_GUARDED_BY(mu) = -1;
  };
  auto state = std::make_shared<State>();
  state->options = std::move(options);
  state->size = registry->AddGauge(
      "tailor_data_volume_size_bytes",
      "Size of the file system that holds the data directory.");
  state->free = registry->AddGauge(
      "tailor_data_volume_free_bytes",
      "Free bytes of the data directory's file system that the server may "
      "write (statvfs f_bavail).");
  state->dir_used = registry->AddGauge(
      "tailor_data_dir_used_bytes",
      "Disk usage of the data directory (job store and journals), refreshed "
      "every few seconds.");
  state->journal_used = registry->AddGauge(
      "tailor_journal_used_bytes",
      "Disk usage of the resume journals of running or interrupted jobs, "
      "refreshed every few seconds.");
  state->journal_free = registry->AddGauge(
      "tailor_journal_free_bytes",
      "Bytes journals may still write: the data volume's free bytes above "
      "the reserve kept for the job store (--journal-reserve-bytes).");
  registry->AddCollector([state] {
    const DataDirMetricsOptions& o = state->options;
    struct statvfs vfs;
    if (::statvfs(o.data_dir.c_str(), &vfs) == 0) {
      const double unit = static_cast<double>(vfs.f_frsize);
      const double avail = static_cast<double>(vfs.f_bavail) * unit;
      state->size->Set({}, static_cast<double>(vfs.f_blocks) * unit);
      state->free->Set({}, avail);
      state->journal_free->Set(
          {},
          std::max(0.0, avail - static_cast<double>(o.journal_reserve_bytes)));
    }
    absl::MutexLock lock(&state->mu);
    const absl::Time now = absl::Now();
    if (now - state->walked >= o.walk_interval) {
      state->walked = now;
      state->dir_bytes = DiskUsageBytes(o.data_dir, o.max_walk_entries);
      state->journal_bytes = DiskUsageBytes(o.journal_dir, o.max_walk_entries);
      // The journal directory is created by the first job that journals.
      if (state->journal_bytes < 0 && state->dir_bytes >= 0) {
        state->journal_bytes = 0;
      }
    }
    if (state->dir_bytes >= 0) {
      state->dir_used->Set({}, static_cast<double>(state->dir_bytes));
    }
    if (state->journal_bytes >= 0) {
      state->journal_used->Set({}, static_cast<double>(state->journal_bytes));
    }
  });
}

}  // namespace tailor::metrics
