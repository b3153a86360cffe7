#include "util/log.h"

#include <unistd.h>

#include <atomic>
#include <string>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"

namespace tailor {
namespace {

std::atomic<int> g_min_level{static_cast<int>(LogLevel::kInfo)};

constexpr const char* kLevelNames[] = {"DEBUG", "INFO", "WARNING", "ERROR"};

std::string Value(absl::string_view v) {
  bool quote = v.empty();
  std::string escaped;
  for (char c : v) {
    if (c == ' ' || c == '=' || c == '"') quote = true;
    if (c == '"' || c == '\\') {
      escaped.push_back('\\');
      escaped.push_back(c);
    } else if (c == '\n') {
      quote = true;
      escaped += "\\n";
    } else {
      escaped.push_back(c);
    }
  }
  return quote ? absl::StrCat("\"", escaped, "\"") : escaped;
}

std::string Prefix(LogLevel level) {
  return absl::StrCat("time=",
                      absl::FormatTime("%Y-%m-%dT%H:%M:%E3SZ", absl::Now(),
                                       absl::UTCTimeZone()),
                      " level=", kLevelNames[static_cast<int>(level)]);
}

void WriteLine(const std::string& line) {
  size_t off = 0;
  while (off < line.size()) {
    ssize_t n = ::write(2, line.data() + off, line.size() - off);
    if (n <= 0) break;
    off += static_cast<size_t>(n);
  }
}

}  // namespace

void SetMinLogLevel(LogLevel level) {
  g_min_level.store(static_cast<int>(level));
}

void Log(LogLevel level, absl::string_view job, absl::string_view message) {
  if (static_cast<int>(level) < g_min_level.load()) return;
  std::string line = Prefix(level);
  if (!job.empty()) absl::StrAppend(&line, " job=", Value(job));
  absl::StrAppend(&line, " msg=", Value(message), "\n");
  WriteLine(line);
}

void LogFields(
    LogLevel level,
    std::initializer_list<std::pair<absl::string_view, absl::string_view>>
        fields) {
  if (static_cast<int>(level) < g_min_level.load()) return;
  std::string line = Prefix(level);
  for (const auto& [key, value] : fields) {
    absl::StrAppend(&line, " ", key, "=", Value(value.substr(0, 256)));
  }
  line += "\n";
  WriteLine(line);
}

}  // namespace tailor
