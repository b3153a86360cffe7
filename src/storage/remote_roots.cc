#include "storage/remote_roots.h"

#include <string>
#include <utility>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "util/quote.h"

namespace tailor {
namespace {

std::string StripSlash(std::string key) {
  while (!key.empty() && key.back() == '/') key.pop_back();
  return key;
}

}  // namespace

bool RemoteUriUnder(const ObjectUri& uri, const ObjectUri& root) {
  if (uri.scheme != root.scheme || uri.bucket != root.bucket ||
      uri.revision != root.revision) {
    return false;
  }
  const std::string r = StripSlash(root.key);
  const std::string k = StripSlash(uri.key);
  if (r.empty()) return true;
  if (!absl::StartsWith(k, r)) return false;
  return k.size() == r.size() || k[r.size()] == '/';
}

absl::StatusOr<RemoteRoots> RemoteRoots::Create(
    const std::vector<std::string>& roots) {
  RemoteRoots out;
  for (const std::string& root : roots) {
    if (!IsRemoteUri(root)) {
      return absl::InvalidArgumentError(
          absl::StrCat("allowed root ", Quote(root), " is not a remote URI"));
    }
    absl::StatusOr<ObjectUri> uri = ParseObjectUri(root);
    if (!uri.ok()) {
      return absl::InvalidArgumentError(absl::StrCat(
          "allowed root ", Quote(root), ": ", uri.status().message()));
    }
    uri->key = StripSlash(uri->key);
    bool duplicate = false;
    for (const ObjectUri& r : out.roots_) duplicate |= r == *uri;
    if (!duplicate) out.roots_.push_back(*std::move(uri));
  }
  return out;
}

bool RemoteRoots::Admits(const ObjectUri& uri) const {
  if (admit_all_) return true;
  for (const ObjectUri& root : roots_) {
    if (RemoteUriUnder(uri, root)) return true;
  }
  return false;
}

bool RemoteRoots::ContainsRoot(const ObjectUri& uri) const {
  for (const ObjectUri& root : roots_) {
    if (RemoteUriUnder(root, uri)) return true;
  }
  return false;
}

std::vector<std::string> RemoteRoots::Strings() const {
  std::vector<std::string> out;
  if (admit_all_) out.push_back("any remote URI");
  for (const ObjectUri& root : roots_) {
    ObjectUri dir = root;
    if (!dir.key.empty()) dir.key.push_back('/');
    out.push_back(dir.ToString());
  }
  return out;
}

}  // namespace tailor
