#include "client/exit_codes.h"

#include <iostream>

namespace tailor::cli {

int ExitCodeForStatus(const absl::Status& status) {
  switch (status.code()) {
    case absl::StatusCode::kOk:
      return kExitOk;
    case absl::StatusCode::kInvalidArgument:
    case absl::StatusCode::kFailedPrecondition:
    case absl::StatusCode::kOutOfRange:
    case absl::StatusCode::kUnimplemented:
    case absl::StatusCode::kDataLoss:
    case absl::StatusCode::kAlreadyExists:
      return kExitInvalidInput;
    case absl::StatusCode::kNotFound:
      return kExitNotFound;
    case absl::StatusCode::kPermissionDenied:
    case absl::StatusCode::kUnauthenticated:
      return kExitPermissionDenied;
    case absl::StatusCode::kCancelled:
      return kExitCancelled;
    case absl::StatusCode::kUnavailable:
    case absl::StatusCode::kDeadlineExceeded:
    case absl::StatusCode::kResourceExhausted:
      return kExitUnavailable;
    default:
      return kExitInternal;
  }
}

int ReportFailure(const absl::Status& status) {
  std::cerr << "tailorctl: error: " << status.message() << "\n";
  return ExitCodeForStatus(status);
}

const char* ExitCodeHelp() {
  return "Exit codes:\n"
         "  0  success\n"
         "  1  internal error\n"
         "  2  usage error (bad flags or arguments)\n"
         "  3  invalid input (malformed or unsupported file, URI or value)\n"
         "  4  not found\n"
         "  5  permission denied (outside --allowed-root, or no access), "
         "or not authenticated (a missing, unknown or malformed token or "
         "client certificate)\n"
         "  6  the job failed (submit --wait, watch)\n"
         "  7  server unavailable, draining or overloaded, or the deadline "
         "passed: retry later (watch, submit --wait: still unreachable "
         "--reconnect-timeout seconds after the stream was lost)\n"
         "  8  detached: interrupted (SIGINT/SIGTERM) while watching (watch, "
         "submit --wait); the job continues on the server (resume with "
         "tailorctl watch NAME --after N)\n"
         "  130  cancelled: fuse --local interrupted, the job was cancelled, "
         "or watch/submit --wait --cancel-on-interrupt interrupted; nothing "
         "was published\n";
}

}  // namespace tailor::cli
