#include "metrics/process_metrics.h"

#include <dirent.h>
#include <sys/resource.h>
#include <unistd.h>

#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_split.h"

namespace tailor::metrics {
namespace {

std::optional<std::string> ReadSmallFile(const char* path) {
  std::ifstream in(path);
  if (!in) return std::nullopt;
  std::ostringstream out;
  out << in.rdbuf();
  return out.str();
}

// Entries of /proc/self/fd, less the one opendir holds while counting.
std::optional<int64_t> OpenFds() {
  DIR* dir = ::opendir("/proc/self/fd");
  if (dir == nullptr) return std::nullopt;
  int64_t n = 0;
  while (const dirent* e = ::readdir(dir)) {
    if (e->d_name[0] != '.') ++n;
  }
  ::closedir(dir);
  return n - 1;
}

}  // namespace

std::optional<ProcStat> ParseProcStat(absl::string_view line) {
  const size_t close = line.rfind(')');
  if (close == absl::string_view::npos) return std::nullopt;
  // Field 3 (state) onwards.
  std::vector<absl::string_view> f =
      absl::StrSplit(line.substr(close + 1), ' ', absl::SkipEmpty());
  // f[i] is field i + 3.
  auto field = [&f](int n) { return f[static_cast<size_t>(n - 3)]; };
  if (f.size() < 24 - 3 + 1) return std::nullopt;
  ProcStat s;
  if (!absl::SimpleAtoi(field(14), &s.utime_ticks) ||
      !absl::SimpleAtoi(field(15), &s.stime_ticks) ||
      !absl::SimpleAtoi(field(22), &s.start_ticks) ||
      !absl::SimpleAtoi(field(23), &s.vsize_bytes) ||
      !absl::SimpleAtoi(field(24), &s.rss_pages)) {
    return std::nullopt;
  }
  return s;
}

std::optional<int64_t> ParseBootTime(absl::string_view proc_stat) {
  for (absl::string_view line : absl::StrSplit(proc_stat, '\n')) {
    if (!absl::ConsumePrefix(&line, "btime ")) continue;
    int64_t t;
    if (absl::SimpleAtoi(line, &t)) return t;
  }
  return std::nullopt;
}

void AddProcessMetrics(Registry* registry) {
  Family* cpu = registry->AddCounter("process_cpu_seconds_total",
                                     "Total user and system CPU time spent in "
                                     "seconds.");
  Family* rss = registry->AddGauge("process_resident_memory_bytes",
                                   "Resident memory size in bytes.");
  Family* vsize = registry->AddGauge("process_virtual_memory_bytes",
                                     "Virtual memory size in bytes.");
  Family* start = registry->AddGauge(
      "process_start_time_seconds",
      "Start time of the process since unix epoch in seconds.");
  Family* open_fds = registry->AddGauge("process_open_fds",
                                        "Number of open file descriptors.");
  Family* max_fds = registry->AddGauge(
      "process_max_fds", "Maximum number of open file descriptors.");
  const double ticks = static_cast<double>(::sysconf(_SC_CLK_TCK));
  const double page = static_cast<double>(::sysconf(_SC_PAGESIZE));
  // The start time does not change: computed once.
  std::optional<double> start_time;
  if (std::optional<std::string> line = ReadSmallFile("/proc/self/stat")) {
    std::optional<std::string> stat = ReadSmallFile("/proc/stat");
    std::optional<ProcStat> s = ParseProcStat(*line);
    std::optional<int64_t> boot =
        stat ? ParseBootTime(*stat) : std::optional<int64_t>();
    if (s && boot && ticks > 0) {
      start_time = static_cast<double>(*boot) +
                   static_cast<double>(s->start_ticks) / ticks;
    }
  }
  registry->AddCollector([=] {
    if (start_time) start->Set({}, *start_time);
    std::optional<std::string> line = ReadSmallFile("/proc/self/stat");
    std::optional<ProcStat> s = line ? ParseProcStat(*line) : std::nullopt;
    if (s && ticks > 0) {
      cpu->Set({},
               static_cast<double>(s->utime_ticks + s->stime_ticks) / ticks);
      rss->Set({}, static_cast<double>(s->rss_pages) * page);
      vsize->Set({}, static_cast<double>(s->vsize_bytes));
    }
    if (std::optional<int64_t> n = OpenFds()) {
      open_fds->Set({}, static_cast<double>(*n));
    }
    rlimit limit;
    if (::getrlimit(RLIMIT_NOFILE, &limit) == 0) {
      max_fds->Set({}, static_cast<double>(limit.rlim_cur));
    }
  });
}

}  // namespace tailor::metrics
