#ifndef TAILOR_UTIL_LOG_H_
#define TAILOR_UTIL_LOG_H_

#include <initializer_list>
#include <utility>

#include "absl/strings/string_view.h"

namespace tailor {

enum class LogLevel { kDebug, kInfo, kWarning, kError };

// Writes one structured (logfmt) line to stderr:
//   time=2026-01-02T03:04:05.678Z level=INFO job=fusionJobs/0123 msg="..."
// `job` may be empty (then no job= field). Values are quoted when they hold
// spaces, quotes or '='; quotes, backslashes and newlines are escaped, so
// one call is always one line. Thread-safe: one write(2) per line.
void Log(LogLevel level, absl::string_view job, absl::string_view message);

// One logfmt line of `fields` (key=value, in order, values quoted and
// escaped as above and cut to 256 bytes each) after time= and level=. For
// lines a program reads (the audit log): keys must be plain identifiers.
void LogFields(
    LogLevel level,
    std::initializer_list<std::pair<absl::string_view, absl::string_view>>
        fields);

// Only lines at `level` or above are written (default kInfo).
void SetMinLogLevel(LogLevel level);

}  // namespace tailor

#endif  // TAILOR_UTIL_LOG_H_
