#ifndef TAILOR_STORAGE_URI_RESOLVER_H_
#define TAILOR_STORAGE_URI_RESOLVER_H_

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "io/byte_source.h"
#include "storage/object_store.h"
#include "storage/read_cache.h"
#include "storage/remote_roots.h"
#include "util/file_util.h"

namespace tailor {

// Maps user-supplied URIs to local paths under a fixed set of allowed roots.
//
// Accepted forms: plain absolute or relative paths (taken literally, relative
// ones against the process's working directory) and `file://` URIs
// (`file:///abs/path` or `file://localhost/abs/path`, percent-decoded once).
// Remote URIs (s3://, https://, hf://: IsRemoteUri) are admitted only by
// remote allowed roots (RemoteRoots, matched component-wise on the
// normalised ObjectUri) and served by the resolver's ObjectStoreProvider;
// without a remote root they are PERMISSION_DENIED, without a provider
// UNIMPLEMENTED "remote storage not configured". What a Resolve*() call
// returns for them is the canonical URI text (ObjectUri::ToString), with a
// trailing '/' when it names a prefix ("directory"); the path-taking methods
// below accept those strings too. Every other scheme (gs://, http://, ...)
// is refused with UNIMPLEMENTED "unsupported scheme".
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
  //
  // `allowed_roots` may mix local directories and remote prefixes
  // (IsRemoteUri: s3://bucket/prefix/); at least one of either.
  struct Remote {
    // Serves remote URIs; null: they are UNIMPLEMENTED "remote storage not
    // configured".
    std::shared_ptr<ObjectStoreProvider> provider;
    // When set, remote reads of whole objects (OpenSource) go through it.
    std::shared_ptr<ReadCache> cache;
    // Where remote outputs are staged before they are uploaded (tailord:
    // under its data directory; tailorctl: --scratch-dir). Created when
    // first needed.
    std::string scratch_dir;
    // Admit every remote URI, whatever the remote roots (tailorctl without
    // --allowed-root, which then admits every local path too: a user at a
    // terminal names what they may read anyway). tailord never sets it.
    bool admit_all_remote = false;
  };
  static absl::StatusOr<UriResolver> Create(
      const std::vector<std::string>& allowed_roots,
      const std::vector<std::string>& protected_paths, Remote remote);
  // The same with no remote access (no provider, cache or scratch
  // directory).
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

  // Any path a Resolve*() call returned (local or remote), opened for
  // random access: a local one beneath its root (OpenForRead), a remote one
  // through the read cache when there is one, else with ranged reads.
  absl::StatusOr<std::unique_ptr<ByteSource>> OpenSource(
      absl::string_view path, absl::string_view subject = "") const;
  // File-system questions that work for both kinds of path. Remote: a
  // directory is a prefix (the path ends in '/'), a file an object that
  // Stat finds; ListNames gives the direct children's names, sorted.
  bool PathIsDirectory(absl::string_view path) const;
  bool PathIsRegularFile(absl::string_view path) const;
  absl::StatusOr<std::vector<std::string>> ListNames(
      absl::string_view path) const;

  // The store for a remote path (canonical text or any remote URI), after
  // the root check. PERMISSION_DENIED outside the remote roots,
  // UNIMPLEMENTED without a provider.
  absl::StatusOr<std::shared_ptr<ObjectStore>> StoreFor(
      const ObjectUri& uri) const;
  // Parses a remote path and checks it against the remote roots (the
  // PERMISSION_DENIED of a local path outside the roots).
  absl::StatusOr<ObjectUri> CheckRemote(absl::string_view uri,
                                        absl::string_view subject) const;

  // Local roots (canonical paths).
  const std::vector<std::string>& roots() const { return roots_; }
  const RemoteRoots& remote_roots() const { return remote_roots_; }
  const std::vector<std::string>& protected_paths() const { return protected_; }
  const std::shared_ptr<ReadCache>& cache() const { return remote_.cache; }
  const std::string& scratch_dir() const { return remote_.scratch_dir; }

 private:
  UriResolver(std::vector<std::string> roots,
              std::vector<std::string> protected_paths,
              RemoteRoots remote_roots, Remote remote)
      : roots_(std::move(roots)),
        protected_(std::move(protected_paths)),
        remote_roots_(std::move(remote_roots)),
        remote_(std::move(remote)) {}
  // The remote halves of the public methods (uri_resolver_remote.cc).
  absl::StatusOr<std::string> ResolveRemote(absl::string_view uri,
                                            bool existing) const;
  absl::StatusOr<std::string> ReadRemoteFile(absl::string_view path,
                                             uint64_t max_bytes,
                                             absl::string_view subject) const;
  absl::StatusOr<std::unique_ptr<ByteSource>> OpenRemoteSource(
      absl::string_view path, absl::string_view subject) const;
  // Every root (local and remote), for messages.
  std::string AllRoots() const;
  // The root that holds canonical `path` (the longest, component-wise), or
  // PERMISSION_DENIED.
  absl::StatusOr<std::string> RootOf(absl::string_view path,
                                     absl::string_view subject) const;

  std::vector<std::string> roots_;  // canonical, no trailing slash except "/"
  std::vector<std::string> protected_;  // canonical
  RemoteRoots remote_roots_;
  Remote remote_;
};

// Returns the scheme of `uri` ("file", "s3", ...) lower-cased, or "" for a
// plain path. A scheme is RFC 3986: ALPHA *( ALPHA / DIGIT / "+" / "-" / "." )
// followed by "://".
std::string UriScheme(absl::string_view uri);

}  // namespace tailor

#endif  // TAILOR_STORAGE_URI_RESOLVER_H_
