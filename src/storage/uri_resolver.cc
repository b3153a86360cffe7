#include "storage/uri_resolver.h"

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cstddef>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/functional/function_ref.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/ascii.h"
#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/strings/string_view.h"
#include "storage/percent_decode.h"
#include "util/beneath_open.h"
#include "util/errno_status.h"
#include "util/file_util.h"
#include "util/status_macros.h"

namespace tailor {
namespace {

// Quotes untrusted text for an error message; control bytes (NUL, newlines)
// are escaped so a hostile URI cannot forge log lines.
std::string Quote(absl::string_view s) {
  return absl::StrCat("'", absl::CHexEscape(s), "'");
}

// A failed path lookup (ErrnoReading::kPathResolution).
absl::Status ErrnoStatus(int err, absl::string_view message) {
  return ErrnoError(err, message, ErrnoReading::kPathResolution);
}

// realpath(3) into a std::string. On failure returns false and sets *err.
bool RealPath(const std::string& path, std::string* out, int* err) {
  errno = 0;
  char* resolved = ::realpath(path.c_str(), nullptr);
  if (resolved == nullptr) {
    *err = errno != 0 ? errno : EINVAL;
    return false;
  }
  out->assign(resolved);
  ::free(resolved);
  return true;
}

// Appends `components` to the canonical absolute directory `dir`.
std::string JoinPath(const std::string& dir,
                     const std::vector<std::string>& components) {
  if (components.empty()) return dir;
  return absl::StrCat(dir == "/" ? "" : dir, "/",
                      absl::StrJoin(components, "/"));
}

// Component-wise containment of canonical absolute paths.
bool IsUnderRoot(absl::string_view path, absl::string_view root) {
  if (root == "/") return true;
  if (!absl::StartsWith(path, root)) return false;
  return path.size() == root.size() || path[root.size()] == '/';
}

bool IsUnderAnyRoot(absl::string_view path,
                    const std::vector<std::string>& roots) {
  for (const std::string& root : roots) {
    if (IsUnderRoot(path, root)) return true;
  }
  return false;
}

std::string RootList(const std::vector<std::string>& roots) {
  std::vector<std::string> quoted;
  quoted.reserve(roots.size());
  for (const std::string& root : roots) quoted.push_back(Quote(root));
  return absl::StrCat("[", absl::StrJoin(quoted, ", "), "]");
}

absl::Status OutsideRoots(absl::string_view subject, absl::string_view resolved,
                          const std::vector<std::string>& roots) {
  return absl::PermissionDeniedError(
      absl::StrCat(subject, " resolves to ", Quote(resolved),
                   ", which is outside the allowed roots ", RootList(roots)));
}

// "URI 'x'" or "URI 'file:///a%20b' (local path '/a b')".
std::string DescribeUri(absl::string_view uri, absl::string_view path) {
  std::string out = absl::StrCat("URI ", Quote(uri));
  if (uri != path) absl::StrAppend(&out, " (local path ", Quote(path), ")");
  return out;
}

// Maps a URI to the local path it names (not yet canonicalised or checked).
absl::StatusOr<std::string> UriToLocalPath(absl::string_view uri) {
  if (uri.empty()) return absl::InvalidArgumentError("empty URI");
  if (uri.find('\0') != absl::string_view::npos) {
    return absl::InvalidArgumentError(
        absl::StrCat("URI ", Quote(uri), " contains a NUL byte"));
  }
  const std::string scheme = UriScheme(uri);
  if (scheme.empty()) return std::string(uri);  // Plain path, taken literally.
  if (scheme != "file") {
    return absl::UnimplementedError(absl::StrCat(
        "unsupported scheme ", Quote(scheme), " in URI ", Quote(uri),
        ": only file://, local paths and the remote schemes s3://, https:// "
        "and hf:// are supported"));
  }
  const absl::string_view rest = uri.substr(scheme.size() + 3);  // "://"
  if (rest.find_first_of("?#") != absl::string_view::npos) {
    return absl::InvalidArgumentError(absl::StrCat(
        "file URI ", Quote(uri),
        " has a query or fragment ('?' or '#'), which is not supported; "
        "percent-encode them (%3F, %23) if they are part of the file name"));
  }
  const size_t slash = rest.find('/');
  const absl::string_view host = rest.substr(0, slash);
  const absl::string_view encoded_path = slash == absl::string_view::npos
                                             ? absl::string_view()
                                             : rest.substr(slash);
  if (!host.empty() && !absl::EqualsIgnoreCase(host, "localhost")) {
    return absl::InvalidArgumentError(absl::StrCat(
        "file URI ", Quote(uri), " names host ", Quote(host),
        "; only file:///path and file://localhost/path are supported"));
  }
  if (encoded_path.empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat("file URI ", Quote(uri), " has an empty path"));
  }
  return PercentDecode(uri, encoded_path);
}

absl::Status CheckPlainPath(absl::string_view path) {
  if (path.empty()) return absl::InvalidArgumentError("empty path");
  if (path.find('\0') != absl::string_view::npos) {
    return absl::InvalidArgumentError(
        absl::StrCat("path ", Quote(path), " contains a NUL byte"));
  }
  return absl::OkStatus();
}

struct Ancestor {
  std::string canonical;             // realpath of the longest existing prefix
  std::vector<std::string> missing;  // the components after it, in order
};

// Finds the longest proper prefix of `path` (by components; empty components
// from "a//b" or a trailing '/' are dropped) that realpath accepts.
// Called after realpath(path) itself failed.
absl::StatusOr<Ancestor> LongestExistingAncestor(const std::string& path) {
  const bool absolute = !path.empty() && path[0] == '/';
  const std::vector<std::string> components =
      absl::StrSplit(path, '/', absl::SkipEmpty());
  for (size_t k = components.size(); k-- > 0;) {
    std::string prefix;
    if (k == 0) {
      prefix = absolute ? "/" : ".";
    } else {
      prefix = absl::StrCat(
          absolute ? "/" : "",
          absl::StrJoin(components.begin(), components.begin() + k, "/"));
    }
    Ancestor ancestor;
    int err = 0;
    if (RealPath(prefix, &ancestor.canonical, &err)) {
      ancestor.missing.assign(components.begin() + k, components.end());
      return ancestor;
    }
  }
  return absl::NotFoundError(
      absl::StrCat("no existing ancestor of ", Quote(path)));
}

// Where `path` (which realpath refused) would lead: the longest existing
// ancestor with the missing components appended, except that a dangling
// symlink among them is followed (readlink, up to 40 links) so that its
// target is what gets checked against the roots.
std::optional<std::string> DanglingTarget(const std::string& path,
                                          int depth = 0) {
  if (depth > 40) return std::nullopt;
  absl::StatusOr<Ancestor> ancestor = LongestExistingAncestor(path);
  if (!ancestor.ok()) return std::nullopt;
  if (ancestor->missing.empty()) return ancestor->canonical;
  const std::string first =
      JoinPath(ancestor->canonical, {ancestor->missing[0]});
  struct stat st;
  if (::lstat(first.c_str(), &st) != 0 || !S_ISLNK(st.st_mode)) {
    return JoinPath(ancestor->canonical, ancestor->missing);
  }
  char buffer[4096];
  const ssize_t n = ::readlink(first.c_str(), buffer, sizeof(buffer) - 1);
  if (n <= 0) return std::nullopt;
  std::string target(buffer, static_cast<size_t>(n));
  if (target[0] != '/') {
    target = absl::StrCat(ancestor->canonical == "/" ? "" : ancestor->canonical,
                          "/", target);
  }
  const std::vector<std::string> rest(ancestor->missing.begin() + 1,
                                      ancestor->missing.end());
  if (!rest.empty())
    target = absl::StrCat(target, "/", absl::StrJoin(rest, "/"));
  return DanglingTarget(target, depth + 1);
}

// Canonicalises `path` (named by `subject` in messages): if it exists, its
// canonical form, or PERMISSION_DENIED when that lies outside the roots;
// otherwise what `missing` makes of realpath's error ("<subject> cannot be
// resolved").
absl::StatusOr<std::string> Canonicalise(
    absl::string_view subject, const std::string& path,
    const std::vector<std::string>& roots,
    absl::FunctionRef<absl::StatusOr<std::string>(const absl::Status&)>
        missing) {
  std::string canonical;
  int err = 0;
  if (!RealPath(path, &canonical, &err)) {
    return missing(
        ErrnoStatus(err, absl::StrCat(subject, " cannot be resolved")));
  }
  if (!IsUnderAnyRoot(canonical, roots)) {
    return OutsideRoots(subject, canonical, roots);
  }
  return canonical;
}

// Canonicalises `path` (named by `subject` in messages), which must exist and
// be inside a root.
absl::StatusOr<std::string> ResolveExistingPath(
    absl::string_view subject, const std::string& path,
    const std::vector<std::string>& roots) {
  return Canonicalise(
      subject, path, roots,
      [&](const absl::Status& resolve_error) -> absl::StatusOr<std::string> {
        // Report a location outside the roots as PERMISSION_DENIED whether
        // or not it exists, so callers cannot probe the file system outside
        // the roots -- also through a dangling symlink inside the roots
        // (issue #10 point 21).
        const std::optional<std::string> target = DanglingTarget(path);
        if (target.has_value() &&
            (!IsUnderAnyRoot(*target, roots) ||
             absl::StrContains(absl::StrCat(*target, "/"), "/../"))) {
          return OutsideRoots(subject, *target, roots);
        }
        return resolve_error;
      });
}

// ResolveWritablePath of a `path` that does not exist (realpath failed with
// `resolve_error`): its longest existing ancestor's canonical form plus the
// missing components, which must be plain names, checked against the roots.
absl::StatusOr<std::string> WritableMissing(
    absl::string_view subject, const std::string& path,
    const std::vector<std::string>& roots, const absl::Status& resolve_error) {
  absl::StatusOr<Ancestor> ancestor = LongestExistingAncestor(path);
  if (!ancestor.ok() || ancestor->missing.empty()) return resolve_error;
  if (!IsUnderAnyRoot(ancestor->canonical, roots)) {
    return OutsideRoots(
        subject, JoinPath(ancestor->canonical, ancestor->missing), roots);
  }
  for (const std::string& component : ancestor->missing) {
    if (component == "..") {
      return absl::PermissionDeniedError(absl::StrCat(
          subject, ": '..' after the existing directory ",
          Quote(ancestor->canonical),
          " cannot be checked against the allowed roots ", RootList(roots),
          "; components of a path that does not exist yet must be plain "
          "names"));
    }
    if (component == ".") {
      return absl::InvalidArgumentError(absl::StrCat(
          subject, ": '.' after the existing directory ",
          Quote(ancestor->canonical),
          "; components of a path that does not exist yet must be plain "
          "names"));
    }
  }
  // The first missing component must really be absent: if it is there but
  // realpath failed, it is a dangling or looping symlink (writing through it
  // could land outside the roots), a non-directory, or unreadable.
  const std::string first =
      JoinPath(ancestor->canonical, {ancestor->missing[0]});
  struct stat st;
  if (::lstat(first.c_str(), &st) == 0) {
    if (S_ISLNK(st.st_mode)) {
      const std::optional<std::string> target = DanglingTarget(path);
      if (target.has_value() && !IsUnderAnyRoot(*target, roots)) {
        return OutsideRoots(subject, *target, roots);
      }
      return absl::FailedPreconditionError(absl::StrCat(
          subject, ": ", Quote(first),
          " is a symbolic link that cannot be resolved (dangling or "
          "looping); refusing to write through it"));
    }
    return resolve_error;
  }
  const int lstat_err = errno;
  if (lstat_err != ENOENT) {
    return ErrnoStatus(
        lstat_err, absl::StrCat(subject, ": cannot inspect ", Quote(first)));
  }
  return JoinPath(ancestor->canonical, ancestor->missing);
}

// Canonicalises `path`, which need not exist yet (an output), inside a root.
absl::StatusOr<std::string> ResolveWritablePath(
    absl::string_view subject, const std::string& path,
    const std::vector<std::string>& roots) {
  return Canonicalise(
      subject, path, roots, [&](const absl::Status& resolve_error) {
        return WritableMissing(subject, path, roots, resolve_error);
      });
}

}  // namespace

absl::StatusOr<UriResolver> UriResolver::Create(
    const std::vector<std::string>& allowed_roots,
    const std::vector<std::string>& protected_paths) {
  return Create(allowed_roots, protected_paths, Remote());
}

absl::StatusOr<UriResolver> UriResolver::Create(
    const std::vector<std::string>& allowed_roots,
    const std::vector<std::string>& protected_paths, Remote remote) {
  if (allowed_roots.empty()) {
    return absl::InvalidArgumentError(
        "UriResolver needs at least one allowed root; pass {\"/\"} to allow "
        "every path");
  }
  std::vector<std::string> remote_root_uris;
  std::vector<std::string> roots;
  for (const std::string& root : allowed_roots) {
    if (IsRemoteUri(root)) {
      remote_root_uris.push_back(root);
      continue;
    }
    if (root.empty()) {
      return absl::InvalidArgumentError("allowed root is an empty string");
    }
    if (root.find('\0') != std::string::npos) {
      return absl::InvalidArgumentError(
          absl::StrCat("allowed root ", Quote(root), " contains a NUL byte"));
    }
    std::string canonical;
    int err = 0;
    if (!RealPath(root, &canonical, &err)) {
      return ErrnoStatus(err, absl::StrCat("allowed root ", Quote(root),
                                           " cannot be resolved"));
    }
    struct stat st;
    if (::stat(canonical.c_str(), &st) != 0) {
      return ErrnoStatus(errno, absl::StrCat("allowed root ", Quote(root),
                                             " cannot be inspected"));
    }
    if (!S_ISDIR(st.st_mode)) {
      return absl::InvalidArgumentError(
          absl::StrCat("allowed root ", Quote(root), " (", Quote(canonical),
                       ") is not a directory"));
    }
    bool duplicate = false;
    for (const std::string& existing : roots)
      duplicate |= existing == canonical;
    if (!duplicate) roots.push_back(std::move(canonical));
  }
  std::vector<std::string> protect;
  for (const std::string& p : protected_paths) {
    if (p.empty() || p.find('\0') != std::string::npos) {
      return absl::InvalidArgumentError(
          absl::StrCat("protected path ", Quote(p), " is empty or has a NUL"));
    }
    std::string canonical;
    int err = 0;
    if (!RealPath(p, &canonical, &err)) {
      TAILOR_ASSIGN_OR_RETURN(Ancestor ancestor, LongestExistingAncestor(p));
      canonical = JoinPath(ancestor.canonical, ancestor.missing);
    }
    protect.push_back(std::move(canonical));
  }
  TAILOR_ASSIGN_OR_RETURN(RemoteRoots remote_roots,
                          RemoteRoots::Create(remote_root_uris));
  if (remote.admit_all_remote) remote_roots = RemoteRoots::AdmitAll();
  return UriResolver(std::move(roots), std::move(protect),
                     std::move(remote_roots), std::move(remote));
}

absl::StatusOr<std::string> UriResolver::ResolveExisting(
    absl::string_view uri) const {
  if (IsRemoteUri(uri)) return ResolveRemote(uri, /*existing=*/true);
  TAILOR_ASSIGN_OR_RETURN(const std::string path, UriToLocalPath(uri));
  return ResolveExistingPath(DescribeUri(uri, path), path, roots_);
}

absl::StatusOr<std::string> UriResolver::ResolveForWrite(
    absl::string_view uri) const {
  if (IsRemoteUri(uri)) return ResolveRemote(uri, /*existing=*/false);
  TAILOR_ASSIGN_OR_RETURN(const std::string path, UriToLocalPath(uri));
  return ResolveWritablePath(DescribeUri(uri, path), path, roots_);
}

absl::StatusOr<std::string> UriResolver::CheckLocalPath(
    absl::string_view path) const {
  if (IsRemoteUri(path)) {
    TAILOR_ASSIGN_OR_RETURN(
        ObjectUri uri, CheckRemote(path, absl::StrCat("path ", Quote(path))));
    return uri.ToString();
  }
  TAILOR_RETURN_IF_ERROR(CheckPlainPath(path));
  return ResolveExistingPath(absl::StrCat("path ", Quote(path)),
                             std::string(path), roots_);
}

absl::StatusOr<std::string> UriResolver::RootOf(
    absl::string_view path, absl::string_view subject) const {
  const std::string* best = nullptr;
  for (const std::string& root : roots_) {
    if (IsUnderRoot(path, root) &&
        (best == nullptr || root.size() > best->size())) {
      best = &root;
    }
  }
  if (best == nullptr || path.empty() || path[0] != '/') {
    return OutsideRoots(subject, path, roots_);
  }
  return *best;
}

namespace {

std::string Subject(absl::string_view subject, absl::string_view path) {
  return subject.empty() ? std::string(path)
                         : absl::StrCat(subject, " (", Quote(path), ")");
}

}  // namespace

absl::StatusOr<ScopedFd> UriResolver::OpenForRead(
    absl::string_view path, absl::string_view subject) const {
  const std::string label = Subject(subject, path);
  if (IsRemoteUri(path)) {
    return absl::InvalidArgumentError(absl::StrCat(
        label, " is a remote object; it is read through OpenSource()"));
  }
  TAILOR_ASSIGN_OR_RETURN(const std::string root, RootOf(path, label));
  TAILOR_ASSIGN_OR_RETURN(
      ScopedFd fd,
      OpenUnderRoot(root, std::string(path), O_RDONLY | O_NONBLOCK, 0, label));
  return FinishOpenForRead(std::move(fd), label);
}

absl::StatusOr<std::string> UriResolver::ReadFile(
    absl::string_view path, uint64_t max_bytes,
    absl::string_view subject) const {
  if (IsRemoteUri(path)) return ReadRemoteFile(path, max_bytes, subject);
  TAILOR_ASSIGN_OR_RETURN(ScopedFd fd, OpenForRead(path, subject));
  return ReadOpenFileToString(fd.get(), Subject(subject, path), max_bytes);
}

absl::Status UriResolver::MakeParentDirectories(
    absl::string_view path, absl::string_view subject) const {
  const std::string label = Subject(subject, path);
  if (IsRemoteUri(path)) return absl::OkStatus();  // prefixes need no mkdir
  std::string parent(path);
  while (parent.size() > 1 && parent.back() == '/') parent.pop_back();
  const size_t slash = parent.rfind('/');
  if (slash == std::string::npos) return OutsideRoots(label, path, roots_);
  parent.resize(slash == 0 ? 1 : slash);
  TAILOR_ASSIGN_OR_RETURN(const std::string root, RootOf(parent, label));
  return MakeDirectoriesUnderRoot(root, parent, label).status();
}

std::string UriScheme(absl::string_view uri) {
  if (uri.empty() || !absl::ascii_isalpha(static_cast<unsigned char>(uri[0]))) {
    return "";
  }
  size_t end = 1;
  while (end < uri.size()) {
    const unsigned char c = static_cast<unsigned char>(uri[end]);
    if (!absl::ascii_isalnum(c) && c != '+' && c != '-' && c != '.') break;
    ++end;
  }
  if (!absl::StartsWith(uri.substr(end), "://")) return "";
  return absl::AsciiStrToLower(uri.substr(0, end));
}

}  // namespace tailor
