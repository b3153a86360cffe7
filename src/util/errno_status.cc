#include "util/errno_status.h"

#include <cerrno>
#include <cstring>
#include <string>

#include "absl/strings/str_cat.h"

namespace tailor {
namespace {

absl::Status FileOperationError(int errno_value, absl::string_view context) {
  std::string message = absl::StrCat(context, ": ", std::strerror(errno_value));
  switch (errno_value) {
    case ENOENT:
    case ENOTDIR:
      return absl::NotFoundError(message);
    case EACCES:
    case EPERM:
    case EROFS:
      return absl::PermissionDeniedError(message);
    case ENOSPC:
    case EDQUOT:
    case EMFILE:
    case ENFILE:
    case ENOMEM:
      return absl::ResourceExhaustedError(message);
    case EEXIST:
      return absl::AlreadyExistsError(message);
    case EINVAL:
    case ENAMETOOLONG:
    case ELOOP:
    case EISDIR:
      return absl::InvalidArgumentError(message);
    default:
      return absl::InternalError(message);
  }
}

}  // namespace

absl::Status ErrnoError(int errno_value, absl::string_view context,
                        ErrnoReading reading) {
  if (reading == ErrnoReading::kFileOperation) {
    return FileOperationError(errno_value, context);
  }
  absl::Status status = absl::ErrnoToStatus(errno_value, context);
  if (errno_value == ELOOP) {
    return absl::FailedPreconditionError(status.message());
  }
  return status;
}

}  // namespace tailor
