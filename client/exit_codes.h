#ifndef TAILOR_CLIENT_EXIT_CODES_H_
#define TAILOR_CLIENT_EXIT_CODES_H_

#include "absl/status/status.h"

namespace tailor::cli {

// tailorctl's exit codes (documented in --help and the README).
enum ExitCode : int {
  kExitOk = 0,
  kExitInternal = 1,          // unexpected failure (a bug, or I/O trouble)
  kExitUsage = 2,             // bad command line
  kExitInvalidInput = 3,      // malformed or unsupported input (file, URI)
  kExitNotFound = 4,          // a named file, tensor or job does not exist
  kExitPermissionDenied = 5,  // outside the allowed roots, or no access
  kExitJobFailed = 6,         // the job ended FAILED (submit --wait, watch)
  kExitUnavailable = 7,       // server unreachable, draining, overloaded, or
                              // the deadline passed: retry later
  kExitDetached = 8,          // Ctrl-C on watch / submit --wait: this client
                              // stopped watching; the job goes on
  kExitCancelled = 130,       // interrupted or cancelled; nothing published
};

// The exit code for a failed status (kExitOk for OK).
int ExitCodeForStatus(const absl::Status& status);

// Prints "tailorctl: error: <message>" on stderr and returns
// ExitCodeForStatus(status).
int ReportFailure(const absl::Status& status);

// One line per code, for --help.
const char* ExitCodeHelp();

}  // namespace tailor::cli

#endif  // TAILOR_CLIENT_EXIT_CODES_H_
