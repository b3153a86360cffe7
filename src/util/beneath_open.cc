#include "util/beneath_open.h"

#include <errno.h>
#include <fcntl.h>
#include <linux/openat2.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <atomic>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "util/errno_status.h"
#include "util/quote.h"

namespace tailor {
namespace {

std::atomic<bool> g_walk_only{false};
std::atomic<bool> g_no_openat2{false};  // the kernel said ENOSYS once

// openat2 with RESOLVE_BENEATH; returns the fd or -1 with errno set.
int OpenAt2Beneath(int root_fd, const std::string& relative, int flags,
                   mode_t mode, bool no_symlinks) {
#ifdef SYS_openat2
  struct open_how how = {};
  how.flags = static_cast<uint64_t>(flags);
  how.mode = (flags & O_CREAT) != 0 ? mode : 0;
  how.resolve = RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS |
                (no_symlinks ? RESOLVE_NO_SYMLINKS : 0);
  for (;;) {
    const long fd =
        ::syscall(SYS_openat2, root_fd, relative.c_str(), &how, sizeof(how));
    if (fd >= 0) return static_cast<int>(fd);
    if (errno != EINTR) return -1;
  }
#else
  errno = ENOSYS;
  return -1;
#endif
}

// Pushes the non-empty, non-"." components of `path` onto `pending` so that
// the first component is popped first (pending is a stack).
void PushComponents(absl::string_view path, std::vector<std::string>* pending) {
  std::vector<std::string> parts;
  for (absl::string_view c : absl::StrSplit(path, '/', absl::SkipEmpty())) {
    if (c != ".") parts.emplace_back(c);
  }
  for (auto it = parts.rbegin(); it != parts.rend(); ++it) {
    pending->push_back(std::move(*it));
  }
}

std::string Where(const std::vector<std::string>& names,
                  absl::string_view last) {
  std::vector<absl::string_view> all(names.begin(), names.end());
  all.push_back(last);
  return absl::StrJoin(all, "/");
}

// The component-by-component walk (see the header).
class Walk {
 public:
  Walk(int root_fd, absl::string_view root_path, absl::string_view label,
       BeneathSymlinks symlinks)
      : root_fd_(root_fd),
        root_path_(root_path),
        label_(label),
        refuse_links_(symlinks == BeneathSymlinks::kRefuse) {}

  // Opens `relative` with `flags` at the last component; with `make_dirs`,
  // missing components are created as directories and the last one is
  // opened as one.
  absl::StatusOr<ScopedFd> Run(absl::string_view relative, int flags,
                               mode_t mode, bool make_dirs) {
    std::vector<std::string> pending;
    PushComponents(relative, &pending);
    if (pending.empty()) return Reopen(flags);
    while (!pending.empty()) {
      std::string c = std::move(pending.back());
      pending.pop_back();
      if (c == "..") {
        if (stack_.empty()) {
          return absl::PermissionDeniedError(absl::StrCat(
              label_, ": '..' ", via_.empty() ? "" : via_,
              "climbs above the allowed root ", Quote(root_path_)));
        }
        stack_.pop_back();
        names_.pop_back();
        if (pending.empty()) return Reopen(flags);
        continue;
      }
      if (c.size() > 255) {
        return absl::InvalidArgumentError(
            absl::StrCat(label_, ": path component ", Quote(c, 40), " is ",
                         c.size(), " bytes; the limit is 255 (ENAMETOOLONG)"));
      }
      const bool last = pending.empty();
      int fd = -1;
      if (last && !make_dirs) {
        fd = ::openat(cur(), c.c_str(), flags | O_NOFOLLOW | O_CLOEXEC, mode);
      } else {
        fd = ::openat(
            cur(), c.c_str(),
            (last ? O_RDONLY : O_PATH) | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
        if (fd < 0 && errno == ENOENT && make_dirs) {
          if (++mkdirs_ > 2 * kMaxBeneathLinks + 4096) {  // removed as made
            return absl::AbortedError(
                absl::StrCat(label_, ": directories keep disappearing under ",
                             Quote(root_path_), " while they are created"));
          }
          if (::mkdirat(cur(), c.c_str(), 0755) != 0 && errno != EEXIST) {
            return ErrnoError(errno, absl::StrCat(label_, ": create directory ",
                                                  Quote(Where(names_, c))));
          }
          pending.push_back(std::move(c));  // open what is there now
          continue;
        }
      }
      if (fd >= 0) {
        ScopedFd owned(fd);
        if (last && !make_dirs) return owned;
        struct stat st;
        if (::fstat(fd, &st) != 0) {
          return ErrnoError(
              errno, absl::StrCat(label_, ": stat ", Quote(Where(names_, c))));
        }
        if (!S_ISDIR(st.st_mode)) {  // O_PATH may open a symlink itself
          pending.push_back(std::move(c));
          if (!FollowLink(&pending)) return error_;
          continue;
        }
        names_.push_back(c);
        stack_.push_back(std::move(owned));
        continue;
      }
      const int err = errno;
      struct stat st;
      if ((err == ELOOP || err == ENOTDIR || err == EEXIST) &&
          ::fstatat(cur(), c.c_str(), &st, AT_SYMLINK_NOFOLLOW) == 0 &&
          S_ISLNK(st.st_mode) && !(err == EEXIST && (flags & O_EXCL))) {
        pending.push_back(std::move(c));
        if (!FollowLink(&pending)) return error_;
        continue;
      }
      if (err == ENOTDIR) {
        return absl::FailedPreconditionError(
            absl::StrCat(label_, ": ", Quote(Where(names_, c)), " under ",
                         Quote(root_path_), " exists and is not a directory"));
      }
      return ErrnoError(err,
                        absl::StrCat(label_, ": open ", Quote(Where(names_, c)),
                                     " under ", Quote(root_path_)));
    }
    // Only make_dirs ends here (its last directory was pushed).
    return Reopen(O_RDONLY | O_DIRECTORY);
  }

 private:
  int cur() const { return stack_.empty() ? root_fd_ : stack_.back().get(); }

  // The directory reached, opened anew with `flags` (".." or "" last).
  absl::StatusOr<ScopedFd> Reopen(int flags) {
    const int fd = ::openat(
        cur(), ".", (flags & ~(O_CREAT | O_EXCL | O_TRUNC)) | O_CLOEXEC);
    if (fd < 0) {
      return ErrnoError(errno, absl::StrCat(label_, ": open ",
                                            Quote(absl::StrJoin(names_, "/"))));
    }
    return ScopedFd(fd);
  }

  // pending.back() names a symlink in cur(): replaces it by its target's
  // components. False (error_ set) if it leaves the root or links loop.
  bool FollowLink(std::vector<std::string>* pending) {
    const std::string c = std::move(pending->back());
    pending->pop_back();
    const std::string where = Where(names_, c);
    if (refuse_links_) {
      error_ = absl::FailedPreconditionError(absl::StrCat(
          label_, ": ", Quote(where), " under ", Quote(root_path_),
          " is a symbolic link (it was not when the path was resolved); "
          "refusing to follow it"));
      return false;
    }
    if (++links_ > kMaxBeneathLinks) {
      error_ = absl::InvalidArgumentError(absl::StrCat(
          label_, ": too many levels of symbolic links (ELOOP) at ",
          Quote(where), " under ", Quote(root_path_), " (more than ",
          kMaxBeneathLinks, "; a loop?)"));
      return false;
    }
    char buffer[4096];
    const ssize_t n = ::readlinkat(cur(), c.c_str(), buffer, sizeof(buffer));
    if (n < 0 || static_cast<size_t>(n) >= sizeof(buffer)) {
      error_ = ErrnoError(
          n < 0 ? errno : ENAMETOOLONG,
          absl::StrCat(label_, ": read symbolic link ", Quote(where)));
      return false;
    }
    const std::string target(buffer, static_cast<size_t>(n));
    via_ = absl::StrCat("(via the symbolic link ", Quote(where), " -> ",
                        Quote(target), ") ");
    if (!target.empty() && target[0] == '/') {
      if (!PathIsUnderRoot(target, root_path_)) {
        error_ = absl::PermissionDeniedError(absl::StrCat(
            label_, ": the symbolic link ", Quote(where), " -> ", Quote(target),
            " leaves the allowed root ", Quote(root_path_)));
        return false;
      }
      stack_.clear();
      names_.clear();
      PushComponents(absl::string_view(target).substr(
                         root_path_ == "/" ? 0 : root_path_.size()),
                     pending);
      return true;
    }
    PushComponents(target, pending);
    return true;
  }

  const int root_fd_;
  const std::string root_path_;
  const std::string label_;
  const bool refuse_links_;
  std::vector<ScopedFd> stack_;     // directories entered below the root
  std::vector<std::string> names_;  // their names, parallel to stack_
  std::string via_;                 // the last link followed, for messages
  int links_ = 0;
  int mkdirs_ = 0;
  absl::Status error_;
};

absl::Status CheckRelative(absl::string_view relative,
                           absl::string_view label) {
  if (!relative.empty() && relative[0] == '/') {
    return absl::InvalidArgumentError(
        absl::StrCat(label, ": ", Quote(relative),
                     " is absolute; expected a path "
                     "relative to the allowed root"));
  }
  if (relative.find('\0') != absl::string_view::npos) {
    return absl::InvalidArgumentError(
        absl::StrCat(label, ": path ", Quote(relative), " contains a NUL"));
  }
  if (relative.size() > kMaxBeneathPathBytes) {
    return absl::InvalidArgumentError(absl::StrCat(
        label, ": path ", Quote(relative, 60), " is ", relative.size(),
        " bytes; the limit is ", kMaxBeneathPathBytes, " (ENAMETOOLONG)"));
  }
  return absl::OkStatus();
}

absl::StatusOr<std::string> RelativeTo(const std::string& root_path,
                                       const std::string& path,
                                       absl::string_view label) {
  if (!PathIsUnderRoot(path, root_path)) {
    return absl::PermissionDeniedError(
        absl::StrCat(label, ": ", Quote(path), " is outside the allowed root ",
                     Quote(root_path)));
  }
  return path.substr(
      root_path == "/" ? 1 : std::min(path.size(), root_path.size() + 1));
}

absl::StatusOr<ScopedFd> OpenRoot(const std::string& root_path) {
  const int fd = ::open(root_path.c_str(), O_PATH | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) {
    return ErrnoError(errno,
                      absl::StrCat("open allowed root ", Quote(root_path)));
  }
  return ScopedFd(fd);
}

}  // namespace

bool PathIsUnderRoot(absl::string_view path, absl::string_view root) {
  if (root == "/") return !path.empty() && path[0] == '/';
  if (!absl::StartsWith(path, root)) return false;
  return path.size() == root.size() || path[root.size()] == '/';
}

void SetBeneathResolverForTesting(BeneathResolver resolver) {
  g_walk_only.store(resolver == BeneathResolver::kWalkOnly);
}

absl::StatusOr<ScopedFd> OpenBeneath(int root_fd, absl::string_view root_path,
                                     absl::string_view relative, int flags,
                                     mode_t mode, absl::string_view label,
                                     BeneathSymlinks symlinks) {
  if (absl::Status s = CheckRelative(relative, label); !s.ok()) return s;
  const std::string rel = relative.empty() ? "." : std::string(relative);
  if (!g_walk_only.load() && !g_no_openat2.load()) {
    const int fd = OpenAt2Beneath(root_fd, rel, flags | O_CLOEXEC, mode,
                                  symlinks == BeneathSymlinks::kRefuse);
    if (fd >= 0) return ScopedFd(fd);
    if (errno == ENOSYS) g_no_openat2.store(true);
    // Any refusal (EXDEV: it would leave the root, or an absolute link that
    // may still point inside it; ELOOP; ENOENT; ...) is left to the walk,
    // which is authoritative and names the component at fault.
  }
  return Walk(root_fd, root_path, label, symlinks).Run(rel, flags, mode, false);
}

absl::StatusOr<ScopedFd> OpenUnderRoot(const std::string& root_path,
                                       const std::string& path, int flags,
                                       mode_t mode, absl::string_view label,
                                       BeneathSymlinks symlinks) {
  absl::StatusOr<std::string> rel = RelativeTo(root_path, path, label);
  if (!rel.ok()) return rel.status();
  absl::StatusOr<ScopedFd> root = OpenRoot(root_path);
  if (!root.ok()) return root.status();
  return OpenBeneath(root->get(), root_path, *rel, flags, mode, label,
                     symlinks);
}

absl::StatusOr<ScopedFd> MakeDirectoriesUnderRoot(const std::string& root_path,
                                                  const std::string& path,
                                                  absl::string_view label) {
  absl::StatusOr<std::string> rel = RelativeTo(root_path, path, label);
  if (!rel.ok()) return rel.status();
  if (absl::Status s = CheckRelative(*rel, label); !s.ok()) return s;
  absl::StatusOr<ScopedFd> root = OpenRoot(root_path);
  if (!root.ok()) return root.status();
  return Walk(root->get(), root_path, label, BeneathSymlinks::kFollowBeneath)
      .Run(*rel, O_RDONLY | O_DIRECTORY, 0, /*make_dirs=*/true);
}

}  // namespace tailor
