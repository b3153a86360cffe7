#ifndef TAILOR_STORAGE_REMOTE_ROOTS_H_
#define TAILOR_STORAGE_REMOTE_ROOTS_H_

// Allowed roots that are remote prefixes (issue #16 point 5):
// `--allowed-root s3://bucket/prefix/`. Matching is component-wise on the
// normalised ObjectUri (storage/object_store.h): same scheme, bucket (host,
// repository) and revision, and the key's '/'-separated segments start with
// the root's, so `s3://b/pre` admits `s3://b/pre/x` and `s3://b/pre` itself
// but never `s3://b/prefix2/x`, and a `..` or `%2e%2e` trick never parses.
// Torch-free; immutable.

#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "storage/object_store.h"

namespace tailor {

class RemoteRoots {
 public:
  RemoteRoots() = default;
  // Each of `roots` must be a remote URI (IsRemoteUri); INVALID_ARGUMENT
  // naming the root otherwise or when it does not parse.
  static absl::StatusOr<RemoteRoots> Create(
      const std::vector<std::string>& roots);

  // Roots that admit every remote URI (and contain none: no output can
  // replace a root's contents).
  static RemoteRoots AdmitAll() {
    RemoteRoots all;
    all.admit_all_ = true;
    return all;
  }

  bool empty() const { return roots_.empty() && !admit_all_; }
  // True if `uri` lies inside (or is) one of the roots.
  bool Admits(const ObjectUri& uri) const;
  // True if `uri` is a root or contains one (an output there would replace
  // a root's contents).
  bool ContainsRoot(const ObjectUri& uri) const;
  // The roots in canonical text form, for messages.
  std::vector<std::string> Strings() const;

 private:
  std::vector<ObjectUri> roots_;  // keys without a trailing '/'
  bool admit_all_ = false;
};

// Component-wise: `uri` is `root` or lies under it (same scheme, bucket,
// revision; root.key's segments a prefix of uri.key's).
bool RemoteUriUnder(const ObjectUri& uri, const ObjectUri& root);

}  // namespace tailor

#endif  // TAILOR_STORAGE_REMOTE_ROOTS_H_
