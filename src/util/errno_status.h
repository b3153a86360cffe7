#ifndef TAILOR_UTIL_ERRNO_STATUS_H_
#define TAILOR_UTIL_ERRNO_STATUS_H_

// errno as an absl::Status: the one helper (not absl::ErrnoToStatus, whose
// mapping differs). What an errno means depends on the call, so there are
// two readings of it.

#include "absl/status/status.h"
#include "absl/strings/string_view.h"

namespace tailor {

enum class ErrnoReading {
  // An operation on a named file (open, read, write, fsync, rename, mkdir):
  // ENOENT, ENOTDIR NOT_FOUND; EACCES, EPERM, EROFS PERMISSION_DENIED;
  // ENOSPC, EDQUOT, EMFILE, ENFILE, ENOMEM RESOURCE_EXHAUSTED; EEXIST
  // ALREADY_EXISTS; EINVAL, ENAMETOOLONG, ELOOP (an O_NOFOLLOW open of a
  // symlink), EISDIR INVALID_ARGUMENT; anything else INTERNAL.
  kFileOperation,
  // Resolving a path (realpath, lstat; storage/uri_resolver.cc): absl's
  // canonical mapping (ENOENT NOT_FOUND, EACCES PERMISSION_DENIED, ENOTDIR
  // FAILED_PRECONDITION, ...), with ELOOP (absl: UNKNOWN) FAILED_PRECONDITION
  // too: a component that is not a directory, or a symlink loop, is a state
  // of the file system for the caller to fix.
  kPathResolution,
};

// "<context>: <strerror(errno_value)>" with the code `reading` gives it.
absl::Status ErrnoError(int errno_value, absl::string_view context,
                        ErrnoReading reading = ErrnoReading::kFileOperation);

}  // namespace tailor

#endif  // TAILOR_UTIL_ERRNO_STATUS_H_
