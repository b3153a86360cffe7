#ifndef TAILOR_STORAGE_URI_RESOLVER_H_
#define TAILOR_STORAGE_URI_RESOLVER_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "util/file_util.h"

namespace tailor {

// Maps user-supplied URIs to local paths under a fixed set of allowed roots.
//
// Accepted forms: plain absolute or relative paths (taken literally, relative
// ones against the process's working directory) and `file://` URIs
// (`file:///abs/path` or `file://localhost/abs/path`, percent-decoded once).
// Every other scheme (s3://, gs://, hf://, http(s)://, ...) is refused with
// UNIMPLEMENTED "unsupported scheme": remote storage is the seam a later
// backend plugs into (a scheme dispatch here that downloads or mounts into a
// local path).
//
// A resolved path is canonical (realpath: no `.`/`..`, no symlinks) and lies
// inside one of the allowed roots, compared component-wise (root `/data` does
// not admit `/data2`). Anything else is PERMISSION_DENIED; a URI with a NUL
// byte, a bad percent escape, or an empty path is INVALID_ARGUMENT; a missing
// file is NOT_FOUND. A dangling symlink whose target lies outside the roots
// is PERMISSION_DENIED too (never NOT_FOUND), so that existence outside the
// roots cannot be probed.
//
// Thread-safe: immutable after Create().
class UriResolver {
 public:
  // Roots are canonicalised with realpath; each must exist and be a
  // directory. An empty list is INVALID_ARGUMENT (deny-all is never what a
  // caller means); pass {"/"} to allow everything.
  //
  // `protected_paths` (e.g. the server's data directory) are canonicalised
  // too (one that does not exist yet through its longest existing ancestor);
  // the resolver only carries them: the output plan (fusion/output_plan.h)
  // refuses outputs that overlap them.
  static absl::StatusOr<UriResolver> Create(
      const std::vector<std::string>& allowed_roots,
      const std::vector<std::string>& protected_paths = {});

  // Resolves a URI naming an existing file or directory.
  absl::StatusOr<std::string> ResolveExisting(absl::string_view uri) const;

  // Resolves a URI naming a file or directory that may not exist yet (an
  // output): the longest existing ancestor is canonicalised and must be inside
  // a root; the remaining components must be plain names (no `.`/`..`). If the
  // full path exists, this behaves like ResolveExisting.
  absl::StatusOr<std::string> ResolveForWrite(absl::string_view uri) const;

  // Checks that an already-local path (e.g. a shard named inside a checkpoint
  // directory) canonicalises to a location inside a root. Returns the
  // canonical path.
  absl::StatusOr<std::string> CheckLocalPath(absl::string_view path) const;

  // Opening what a Resolve*() call returned (issue #14 point 7): `path` is
  // a canonical path inside a root, and is opened beneath that root's
  // directory (util/beneath_open.h), so a symlink swapped into the root
  // after the path was resolved cannot lead the open outside it
  // (PERMISSION_DENIED naming the link). Symlinks that stay inside the root
  // are followed. `subject` names the field or file in messages.
  //
  // OpenForRead: as OpenForRead() in util/file_util.h (never blocks on a
  // FIFO; anything but a regular file is INVALID_ARGUMENT).
  absl::StatusOr<ScopedFd> OpenForRead(absl::string_view path,
                                       absl::string_view subject = "") const;
  // ReadFileToString() through OpenForRead().
  absl::StatusOr<std::string> ReadFile(absl::string_view path,
                                       uint64_t max_bytes,
                                       absl::string_view subject = "") const;
  // Creates the missing directories above output `path` (as `mkdir -p`, with
  // mkdirat beneath the root that holds it; never outside it). An existing
  // non-directory among them is FAILED_PRECONDITION naming `subject`.
  absl::Status MakeParentDirectories(absl::string_view path,
                                     absl::string_view subject = "") const;

  const std::vector<std::string>& roots() const { return roots_; }
  const std::vector<std::string>& protected_paths() const { return protected_; }

 private:
  UriResolver(std::vector<std::string> roots,
              std::vector<std::string> protected_paths)
      : roots_(std::move(roots)), protected_(std::move(protected_paths)) {}
  // The root that holds canonical `path` (the longest, component-wise), or
  // PERMISSION_DENIED.
  absl::StatusOr<std::string> RootOf(absl::string_view path,
                                     absl::string_view subject) const;

  std::vector<std::string> roots_;  // canonical, no trailing slash except "/"
  std::vector<std::string> protected_;  // canonical
};

// Returns the scheme of `uri` ("file", "s3", ...) lower-cased, or "" for a
// plain path. A scheme is RFC 3986: ALPHA *( ALPHA / DIGIT / "+" / "-" / "." )
// followed by "://".
std::string UriScheme(absl::string_view uri);

}  // namespace tailor

#endif  // TAILOR_STORAGE_URI_RESOLVER_H_
