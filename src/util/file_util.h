#ifndef TAILOR_UTIL_FILE_UTIL_H_
#define TAILOR_UTIL_FILE_UTIL_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "util/errno_status.h"

namespace tailor {

// Owns a POSIX file descriptor; closes it on destruction. Movable.
class ScopedFd {
 public:
  ScopedFd() = default;
  explicit ScopedFd(int fd) : fd_(fd) {}
  ScopedFd(ScopedFd&& other) noexcept : fd_(other.release()) {}
  ScopedFd& operator=(ScopedFd&& other) noexcept;
  ScopedFd(const ScopedFd&) = delete;
  ScopedFd& operator=(const ScopedFd&) = delete;
  ~ScopedFd();

  int get() const { return fd_; }
  bool valid() const { return fd_ >= 0; }
  int release() {
    int fd = fd_;
    fd_ = -1;
    return fd;
  }

 private:
  int fd_ = -1;
};

// Opens `path` read-only (O_CLOEXEC) for reading its contents. Never blocks
// in open(2): the open is O_NONBLOCK, anything but a regular file (a FIFO, a
// device, a directory) is INVALID_ARGUMENT "<path> is not a regular file
// (FIFO)", and the flag is cleared on the regular file returned. Every input
// file goes through here.
absl::StatusOr<ScopedFd> OpenForRead(const std::string& path);
// The checks of OpenForRead() on a descriptor opened O_RDONLY | O_NONBLOCK
// some other way (util/beneath_open.h); `path` names it in messages.
absl::StatusOr<ScopedFd> FinishOpenForRead(ScopedFd fd, absl::string_view path);

// Size of an open file; errors if it is not a regular file.
absl::StatusOr<uint64_t> RegularFileSize(int fd, absl::string_view label);

// Reads exactly `size` bytes at `offset` (pread, retried on EINTR and short
// reads). A premature end of file is DATA_LOSS naming `label`. Thread-safe
// for concurrent callers on the same fd.
absl::Status PReadFully(int fd, void* buffer, size_t size, uint64_t offset,
                        absl::string_view label);

// Writes all of `data` at `offset` (pwrite, retried).
absl::Status PWriteFully(int fd, const void* data, size_t size, uint64_t offset,
                         absl::string_view label);

// Reads a whole file of at most `max_bytes` (larger is INVALID_ARGUMENT).
absl::StatusOr<std::string> ReadFileToString(const std::string& path,
                                             uint64_t max_bytes);
// The same from an open regular file (read from offset 0).
absl::StatusOr<std::string> ReadOpenFileToString(int fd, absl::string_view path,
                                                 uint64_t max_bytes);

// Writes `contents` to `path` atomically: a temporary file in the same
// directory, fsync, rename over `path`, fsync of the directory. A crash
// leaves either the old file or the new one, never a torn one.
absl::Status WriteFileAtomically(const std::string& path,
                                 absl::string_view contents);

// fsync on a directory, making renames and creations inside it durable.
absl::Status FsyncDirectory(const std::string& dir);

// Copies a regular file (contents only, mode 0644) and fsyncs the copy.
absl::Status CopyFileDurably(const std::string& from, const std::string& to);
// The same into a new entry `name` of directory `dirfd` (O_EXCL, never
// following a symlink there); `label` names it in messages.
absl::Status CopyFileDurablyAt(const std::string& from, int dirfd,
                               const std::string& name,
                               absl::string_view label);

// Creates entry `name` of directory `dirfd` (O_EXCL | O_NOFOLLOW) with
// `contents` and fsyncs it.
absl::Status WriteFileAt(int dirfd, const std::string& name,
                         absl::string_view contents, absl::string_view label);

// Creates `dir` and any missing parents (mode 0755); an existing directory
// is OK, an existing non-directory is FAILED_PRECONDITION.
absl::Status MakeDirectories(const std::string& dir);

// Removes a file or a directory tree; a missing path is OK.
absl::Status RemoveAll(const std::string& path);

// For checks when a request is made: stat(2) only, so it never blocks. OK
// for a regular file or a directory; anything else (a FIFO, a socket, a
// device) is INVALID_ARGUMENT "<path> is not a regular file or directory
// (FIFO)".
absl::Status CheckFileOrDirectory(const std::string& path);

bool PathExists(const std::string& path);
bool IsDirectory(const std::string& path);
bool IsRegularFile(const std::string& path);

// Plain-name entries of a directory (no "." or ".."), sorted.
absl::StatusOr<std::vector<std::string>> ListDirectory(const std::string& dir);

std::string JoinPath(absl::string_view a, absl::string_view b);
// "dir/name" -> "dir"; "name" -> "."; "/name" -> "/".
std::string Dirname(absl::string_view path);
std::string Basename(absl::string_view path);

}  // namespace tailor

#endif  // TAILOR_UTIL_FILE_UTIL_H_
