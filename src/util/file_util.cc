#include "util/file_util.h"

#include <dirent.h>
#include <fcntl.h>
#include <ftw.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "util/status_macros.h"

namespace tailor {

ScopedFd& ScopedFd::operator=(ScopedFd&& other) noexcept {
  if (this != &other) {
    if (fd_ >= 0) ::close(fd_);
    fd_ = other.release();
  }
  return *this;
}

ScopedFd::~ScopedFd() {
  if (fd_ >= 0) ::close(fd_);
}

namespace {

const char* FileTypeName(mode_t mode) {
  if (S_ISDIR(mode)) return "directory";
  if (S_ISFIFO(mode)) return "FIFO";
  if (S_ISSOCK(mode)) return "socket";
  if (S_ISCHR(mode)) return "character device";
  if (S_ISBLK(mode)) return "block device";
  return "special file";
}

}  // namespace

absl::StatusOr<ScopedFd> OpenForRead(const std::string& path) {
  // O_NONBLOCK: opening a FIFO for reading would otherwise wait for a writer
  // for ever. Regular files ignore the flag; it is cleared once the file is
  // known to be one, so reads behave as usual.
  int fd = ::open(path.c_str(), O_RDONLY | O_NONBLOCK | O_CLOEXEC);
  if (fd < 0) return ErrnoError(errno, absl::StrCat("open ", path));
  return FinishOpenForRead(ScopedFd(fd), path);
}

absl::StatusOr<ScopedFd> FinishOpenForRead(ScopedFd owned,
                                           absl::string_view path) {
  const int fd = owned.get();
  TAILOR_RETURN_IF_ERROR(RegularFileSize(fd, path).status());
  const int flags = ::fcntl(fd, F_GETFL);
  if (flags < 0 || ::fcntl(fd, F_SETFL, flags & ~O_NONBLOCK) != 0) {
    return ErrnoError(errno, absl::StrCat("fcntl ", path));
  }
  return owned;
}

absl::StatusOr<uint64_t> RegularFileSize(int fd, absl::string_view label) {
  struct stat st;
  if (::fstat(fd, &st) != 0) {
    return ErrnoError(errno, absl::StrCat("stat ", label));
  }
  if (!S_ISREG(st.st_mode)) {
    return absl::InvalidArgumentError(absl::StrCat(
        label, " is not a regular file (", FileTypeName(st.st_mode), ")"));
  }
  return static_cast<uint64_t>(st.st_size);
}

absl::Status PReadFully(int fd, void* buffer, size_t size, uint64_t offset,
                        absl::string_view label) {
  auto* out = static_cast<char*>(buffer);
  size_t done = 0;
  while (done < size) {
    ssize_t n =
        ::pread(fd, out + done, size - done, static_cast<off_t>(offset + done));
    if (n < 0) {
      if (errno == EINTR) continue;
      return ErrnoError(errno, absl::StrCat("read ", label));
    }
    if (n == 0) {
      return absl::DataLossError(
          absl::StrCat(label, ": unexpected end of file at byte ",
                       offset + done, " (the file shrank or is truncated)"));
    }
    done += static_cast<size_t>(n);
  }
  return absl::OkStatus();
}

absl::Status PWriteFully(int fd, const void* data, size_t size, uint64_t offset,
                         absl::string_view label) {
  const auto* in = static_cast<const char*>(data);
  size_t done = 0;
  while (done < size) {
    ssize_t n =
        ::pwrite(fd, in + done, size - done, static_cast<off_t>(offset + done));
    if (n < 0) {
      if (errno == EINTR) continue;
      return ErrnoError(errno, absl::StrCat("write ", label));
    }
    done += static_cast<size_t>(n);
  }
  return absl::OkStatus();
}

absl::StatusOr<std::string> ReadFileToString(const std::string& path,
                                             uint64_t max_bytes) {
  absl::StatusOr<ScopedFd> fd = OpenForRead(path);
  if (!fd.ok()) return fd.status();
  return ReadOpenFileToString(fd->get(), path, max_bytes);
}

absl::StatusOr<std::string> ReadOpenFileToString(int fd, absl::string_view path,
                                                 uint64_t max_bytes) {
  absl::StatusOr<uint64_t> size = RegularFileSize(fd, path);
  if (!size.ok()) return size.status();
  if (*size > max_bytes) {
    return absl::InvalidArgumentError(absl::StrCat(
        path, ": file is ", *size, " bytes; the limit is ", max_bytes));
  }
  std::string contents(*size, '\0');
  absl::Status s = PReadFully(fd, contents.data(), contents.size(), 0, path);
  if (!s.ok()) return s;
  return contents;
}

namespace {

std::string TempSibling(const std::string& path) {
  static std::atomic<uint64_t> counter{0};
  return absl::StrCat(Dirname(path), "/.", Basename(path), ".tmp-", ::getpid(),
                      "-", counter.fetch_add(1));
}

absl::Status FsyncFd(int fd, absl::string_view label) {
  while (::fsync(fd) != 0) {
    if (errno != EINTR) return ErrnoError(errno, absl::StrCat("fsync ", label));
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status FsyncDirectory(const std::string& dir) {
  int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) return ErrnoError(errno, absl::StrCat("open directory ", dir));
  ScopedFd owned(fd);
  return FsyncFd(fd, dir);
}

absl::Status WriteFileAtomically(const std::string& path,
                                 absl::string_view contents) {
  const std::string tmp = TempSibling(path);
  int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
  if (fd < 0) return ErrnoError(errno, absl::StrCat("create ", tmp));
  absl::Status s;
  {
    ScopedFd owned(fd);
    s = PWriteFully(fd, contents.data(), contents.size(), 0, tmp);
    if (s.ok()) s = FsyncFd(fd, tmp);
  }
  if (s.ok() && ::rename(tmp.c_str(), path.c_str()) != 0) {
    s = ErrnoError(errno, absl::StrCat("rename ", tmp, " -> ", path));
  }
  if (!s.ok()) {
    ::unlink(tmp.c_str());
    return s;
  }
  return FsyncDirectory(Dirname(path));
}

namespace {

// Copies the contents of regular file `from` into the open file `fd` (named
// `to` in messages) and fsyncs it.
absl::Status CopyIntoFd(const std::string& from, int fd, absl::string_view to) {
  absl::StatusOr<ScopedFd> in = OpenForRead(from);
  if (!in.ok()) return in.status();
  std::vector<char> buffer(1 << 20);
  uint64_t offset = 0;
  for (;;) {
    ssize_t n = ::read(in->get(), buffer.data(), buffer.size());
    if (n < 0) {
      if (errno == EINTR) continue;
      return ErrnoError(errno, absl::StrCat("read ", from));
    }
    if (n == 0) break;
    absl::Status s =
        PWriteFully(fd, buffer.data(), static_cast<size_t>(n), offset, to);
    if (!s.ok()) return s;
    offset += static_cast<uint64_t>(n);
  }
  return FsyncFd(fd, to);
}

}  // namespace

absl::Status CopyFileDurably(const std::string& from, const std::string& to) {
  int fd = ::open(to.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) return ErrnoError(errno, absl::StrCat("create ", to));
  ScopedFd out(fd);
  return CopyIntoFd(from, fd, to);
}

absl::Status CopyFileDurablyAt(const std::string& from, int dirfd,
                               const std::string& name,
                               absl::string_view label) {
  int fd = ::openat(dirfd, name.c_str(),
                    O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0644);
  if (fd < 0) return ErrnoError(errno, absl::StrCat("create ", label));
  ScopedFd out(fd);
  return CopyIntoFd(from, fd, label);
}

absl::Status WriteFileAt(int dirfd, const std::string& name,
                         absl::string_view contents, absl::string_view label) {
  int fd = ::openat(dirfd, name.c_str(),
                    O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0644);
  if (fd < 0) return ErrnoError(errno, absl::StrCat("create ", label));
  ScopedFd out(fd);
  TAILOR_RETURN_IF_ERROR(
      PWriteFully(fd, contents.data(), contents.size(), 0, label));
  return FsyncFd(fd, label);
}

absl::Status MakeDirectories(const std::string& dir) {
  if (dir.empty()) return absl::InvalidArgumentError("empty directory path");
  if (IsDirectory(dir)) return absl::OkStatus();
  if (PathExists(dir)) {
    return absl::FailedPreconditionError(
        absl::StrCat(dir, " exists and is not a directory"));
  }
  const std::string parent = Dirname(dir);
  if (parent != dir) TAILOR_RETURN_IF_ERROR(MakeDirectories(parent));
  if (::mkdir(dir.c_str(), 0755) != 0 && errno != EEXIST) {
    return ErrnoError(errno, absl::StrCat("create directory ", dir));
  }
  return absl::OkStatus();
}

absl::Status RemoveAll(const std::string& path) {
  struct stat st;
  if (::lstat(path.c_str(), &st) != 0) {
    if (errno == ENOENT) return absl::OkStatus();
    return ErrnoError(errno, absl::StrCat("stat ", path));
  }
  if (!S_ISDIR(st.st_mode)) {
    if (::unlink(path.c_str()) != 0 && errno != ENOENT) {
      return ErrnoError(errno, absl::StrCat("remove ", path));
    }
    return absl::OkStatus();
  }
  auto remove_entry = [](const char* p, const struct stat*, int,
                         struct FTW*) -> int { return ::remove(p); };
  if (::nftw(path.c_str(), remove_entry, 16, FTW_DEPTH | FTW_PHYS) != 0) {
    return ErrnoError(errno, absl::StrCat("remove ", path));
  }
  return absl::OkStatus();
}

absl::Status CheckFileOrDirectory(const std::string& path) {
  struct stat st;
  if (::stat(path.c_str(), &st) != 0) {
    return ErrnoError(errno, absl::StrCat("stat ", path));
  }
  if (S_ISREG(st.st_mode) || S_ISDIR(st.st_mode)) return absl::OkStatus();
  return absl::InvalidArgumentError(
      absl::StrCat(path, " is not a regular file or directory (",
                   FileTypeName(st.st_mode), ")"));
}

bool PathExists(const std::string& path) {
  struct stat st;
  return ::stat(path.c_str(), &st) == 0;
}

bool IsDirectory(const std::string& path) {
  struct stat st;
  return ::stat(path.c_str(), &st) == 0 && S_ISDIR(st.st_mode);
}

bool IsRegularFile(const std::string& path) {
  struct stat st;
  return ::stat(path.c_str(), &st) == 0 && S_ISREG(st.st_mode);
}

absl::StatusOr<std::vector<std::string>> ListDirectory(const std::string& dir) {
  DIR* d = ::opendir(dir.c_str());
  if (d == nullptr) return ErrnoError(errno, absl::StrCat("list ", dir));
  std::vector<std::string> names;
  while (struct dirent* e = ::readdir(d)) {
    absl::string_view name = e->d_name;
    if (name == "." || name == "..") continue;
    names.emplace_back(name);
  }
  ::closedir(d);
  std::sort(names.begin(), names.end());
  return names;
}

std::string JoinPath(absl::string_view a, absl::string_view b) {
  if (a.empty()) return std::string(b);
  if (!b.empty() && b.front() == '/') return std::string(b);
  if (a.back() == '/') return absl::StrCat(a, b);
  return absl::StrCat(a, "/", b);
}

std::string Dirname(absl::string_view path) {
  while (path.size() > 1 && path.back() == '/') path.remove_suffix(1);
  size_t slash = path.rfind('/');
  if (slash == absl::string_view::npos) return ".";
  if (slash == 0) return "/";
  return std::string(path.substr(0, slash));
}

std::string Basename(absl::string_view path) {
  while (path.size() > 1 && path.back() == '/') path.remove_suffix(1);
  size_t slash = path.rfind('/');
  if (slash == absl::string_view::npos) return std::string(path);
  return std::string(path.substr(slash + 1));
}

}  // namespace tailor
