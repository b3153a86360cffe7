#ifndef TAILOR_UTIL_BENEATH_OPEN_H_
#define TAILOR_UTIL_BENEATH_OPEN_H_

// Opening a path beneath an allowed root's directory descriptor, so that a
// symlink swapped into the root after the path was validated cannot make the
// open escape it (issue #14 point 7: realpath-then-open was a TOCTOU).
//
// Resolution: openat2(2) with RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS where
// the kernel has it; when it does not (ENOSYS, or a seccomp filter), and to
// explain any refusal, a walk component by component with
// openat(O_NOFOLLOW) that resolves symlinks by hand:
//   - a relative symlink is followed from the directory that holds it, an
//     absolute one only when its target lies inside the root (the root's
//     own path is known);
//   - a '..' (in the path or in a link target) never climbs above the root;
//   - anything that would leave the root is PERMISSION_DENIED naming the
//     link (or the '..') and the root; at most kMaxBeneathLinks symlinks are
//     followed (a loop is INVALID_ARGUMENT "too many levels of symbolic
//     links (ELOOP)").
// Symlinks that stay inside the root work as usual (a Hugging Face cache's
// snapshots/ -> ../../blobs/ links). The root itself is trusted (it is the
// operator's configuration) and opened by path.
//
// Torch-free; thread-safe (no state but the cached "kernel lacks openat2").

#include <sys/types.h>

#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "util/file_util.h"

namespace tailor {

inline constexpr int kMaxBeneathLinks = 40;
// Longest path (relative to its root) accepted; longer is INVALID_ARGUMENT.
inline constexpr size_t kMaxBeneathPathBytes = 4095;

// What a symlink met on the way does: followed while it stays beneath the
// root (inputs), or refused wherever it is (kRefuse: FAILED_PRECONDITION
// naming it; for directories that were canonical when they were resolved,
// such as an output's parent: StagedOutput).
enum class BeneathSymlinks { kFollowBeneath, kRefuse };

// Opens `relative` ('/'-separated; must not be absolute; "" or "." is the
// root itself) beneath the directory `root_fd`, whose canonical absolute
// path is `root_path`, with open(2) `flags` (O_CLOEXEC and O_NOFOLLOW are
// added; `mode` is used with O_CREAT). Errors name `label` (the field or
// path being opened); a missing file is NOT_FOUND as from open(2).
absl::StatusOr<ScopedFd> OpenBeneath(
    int root_fd, absl::string_view root_path, absl::string_view relative,
    int flags, mode_t mode, absl::string_view label,
    BeneathSymlinks symlinks = BeneathSymlinks::kFollowBeneath);

// Opens the absolute path `path`, which must lie (component-wise) inside the
// canonical directory `root_path`, beneath it: opens the root, then
// OpenBeneath() with the rest of `path`.
absl::StatusOr<ScopedFd> OpenUnderRoot(
    const std::string& root_path, const std::string& path, int flags,
    mode_t mode, absl::string_view label,
    BeneathSymlinks symlinks = BeneathSymlinks::kFollowBeneath);

// Like `mkdir -p`: creates each missing directory of the absolute `path`
// (inside `root_path`) with mkdirat(0755) in the directory reached so far,
// resolving existing components as OpenBeneath() does. An existing
// non-directory is FAILED_PRECONDITION. Returns the final directory
// (O_RDONLY | O_DIRECTORY).
absl::StatusOr<ScopedFd> MakeDirectoriesUnderRoot(const std::string& root_path,
                                                  const std::string& path,
                                                  absl::string_view label);

// Whether a path is resolved with openat2 (the default, where the kernel has
// it) or always by the openat walk; for tests of both.
enum class BeneathResolver { kAuto, kWalkOnly };
void SetBeneathResolverForTesting(BeneathResolver resolver);

// True if `path` equals canonical `root` or lies under it, component-wise.
bool PathIsUnderRoot(absl::string_view path, absl::string_view root);

}  // namespace tailor

#endif  // TAILOR_UTIL_BENEATH_OPEN_H_
