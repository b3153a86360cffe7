// UriResolver's remote half (storage/uri_resolver.h): remote allowed roots,
// the provider's stores, and the read cache.

#include <algorithm>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "storage/remote_byte_source.h"
#include "storage/uri_resolver.h"
#include "util/file_util.h"
#include "util/status_macros.h"

namespace tailor {
namespace {

std::string Quoted(absl::string_view s) {
  return absl::StrCat("'", absl::CHexEscape(s), "'");
}

std::string Label(absl::string_view subject, absl::string_view path) {
  return subject.empty() ? std::string(path)
                         : absl::StrCat(subject, " (", Quoted(path), ")");
}

}  // namespace

std::string UriResolver::AllRoots() const {
  std::vector<std::string> quoted;
  for (const std::string& root : roots_) quoted.push_back(Quoted(root));
  for (const std::string& root : remote_roots_.Strings()) {
    quoted.push_back(Quoted(root));
  }
  return absl::StrCat("[", absl::StrJoin(quoted, ", "), "]");
}

absl::StatusOr<ObjectUri> UriResolver::CheckRemote(
    absl::string_view text, absl::string_view subject) const {
  TAILOR_ASSIGN_OR_RETURN(ObjectUri uri, ParseObjectUri(text));
  // ToString() does not re-encode: a decoded '%' would decode again when
  // the canonical text is parsed later, naming another object.
  if (absl::StrContains(uri.key, '%')) {
    return absl::InvalidArgumentError(
        absl::StrCat(subject,
                     ": a '%' in a remote key (after decoding) is "
                     "not supported"));
  }
  if (!remote_roots_.Admits(uri)) {
    return absl::PermissionDeniedError(
        absl::StrCat(subject, " resolves to ", Quoted(uri.ToString()),
                     ", which is outside the allowed roots ", AllRoots()));
  }
  return uri;
}

absl::StatusOr<std::shared_ptr<ObjectStore>> UriResolver::StoreFor(
    const ObjectUri& uri) const {
  if (!remote_roots_.Admits(uri)) {
    return absl::PermissionDeniedError(absl::StrCat(
        Quoted(uri.ToString()), " is outside the allowed roots ", AllRoots()));
  }
  if (remote_.provider == nullptr) {
    return absl::UnimplementedError(
        absl::StrCat(Quoted(uri.ToString()),
                     ": remote storage not configured (this build "
                     "has no ",
                     uri.scheme, ":// backend)"));
  }
  return remote_.provider->StoreFor(uri);
}

absl::StatusOr<std::string> UriResolver::ResolveRemote(absl::string_view text,
                                                       bool existing) const {
  const std::string subject = absl::StrCat("URI ", Quoted(text));
  TAILOR_ASSIGN_OR_RETURN(ObjectUri uri, CheckRemote(text, subject));
  TAILOR_ASSIGN_OR_RETURN(std::shared_ptr<ObjectStore> store, StoreFor(uri));
  if (!existing) {
    // One canonical form for an output, whatever it will hold.
    while (!uri.key.empty() && uri.key.back() == '/') uri.key.pop_back();
    if (uri.key.empty()) {
      return absl::InvalidArgumentError(
          absl::StrCat(subject, ": an output needs a key, not a whole bucket"));
    }
    return uri.ToString();
  }
  const bool prefix = uri.key.empty() || absl::EndsWith(uri.key, "/");
  if (!prefix) {
    absl::StatusOr<ObjectInfo> info = store->Stat(uri);
    if (info.ok()) return uri.ToString();
    if (!absl::IsNotFound(info.status())) return info.status();
    uri.key.push_back('/');  // maybe a "directory"
    absl::StatusOr<std::vector<ObjectUri>> children = store->List(uri);
    if (children.ok() && !children->empty()) return uri.ToString();
    return info.status();
  }
  TAILOR_ASSIGN_OR_RETURN(std::vector<ObjectUri> children, store->List(uri));
  if (children.empty()) {
    return absl::NotFoundError(
        absl::StrCat(subject, ": no objects under this prefix"));
  }
  return uri.ToString();
}

absl::StatusOr<std::string> UriResolver::ReadRemoteFile(
    absl::string_view path, uint64_t max_bytes,
    absl::string_view subject) const {
  const std::string label = Label(subject, path);
  TAILOR_ASSIGN_OR_RETURN(ObjectUri uri, CheckRemote(path, label));
  TAILOR_ASSIGN_OR_RETURN(std::shared_ptr<ObjectStore> store, StoreFor(uri));
  TAILOR_ASSIGN_OR_RETURN(ObjectInfo info, store->Stat(uri));
  if (info.size > max_bytes) {
    return absl::InvalidArgumentError(absl::StrCat(
        label, ": file is ", info.size, " bytes; the limit is ", max_bytes));
  }
  std::string bytes(info.size, '\0');
  TAILOR_RETURN_IF_ERROR(
      store->ReadRange(uri, info, 0, bytes.size(), bytes.data()));
  return bytes;
}

absl::StatusOr<std::unique_ptr<ByteSource>> UriResolver::OpenRemoteSource(
    absl::string_view path, absl::string_view subject) const {
  TAILOR_ASSIGN_OR_RETURN(ObjectUri uri,
                          CheckRemote(path, Label(subject, path)));
  TAILOR_ASSIGN_OR_RETURN(std::shared_ptr<ObjectStore> store, StoreFor(uri));
  TAILOR_ASSIGN_OR_RETURN(ObjectInfo info, store->Stat(uri));
  if (remote_.cache != nullptr) {
    return remote_.cache->OpenObject(std::move(store), uri, info);
  }
  return NewRemoteByteSource(std::move(store), uri, info);
}

absl::StatusOr<std::unique_ptr<ByteSource>> UriResolver::OpenSource(
    absl::string_view path, absl::string_view subject) const {
  if (IsRemoteUri(path)) return OpenRemoteSource(path, subject);
  TAILOR_ASSIGN_OR_RETURN(ScopedFd fd, OpenForRead(path, subject));
  return NewFileByteSource(std::string(path), std::move(fd));
}

bool UriResolver::PathIsDirectory(absl::string_view path) const {
  if (!IsRemoteUri(path)) return IsDirectory(std::string(path));
  absl::StatusOr<ObjectUri> uri = ParseObjectUri(path);
  return uri.ok() && (uri->key.empty() || absl::EndsWith(uri->key, "/"));
}

bool UriResolver::PathIsRegularFile(absl::string_view path) const {
  if (!IsRemoteUri(path)) return IsRegularFile(std::string(path));
  if (PathIsDirectory(path)) return false;
  absl::StatusOr<ObjectUri> uri = CheckRemote(path, path);
  if (!uri.ok()) return false;
  absl::StatusOr<std::shared_ptr<ObjectStore>> store = StoreFor(*uri);
  return store.ok() && (*store)->Stat(*uri).ok();
}

absl::StatusOr<std::vector<std::string>> UriResolver::ListNames(
    absl::string_view path) const {
  if (!IsRemoteUri(path)) return ListDirectory(std::string(path));
  TAILOR_ASSIGN_OR_RETURN(ObjectUri uri, CheckRemote(path, path));
  if (!uri.key.empty() && !absl::EndsWith(uri.key, "/")) uri.key.push_back('/');
  TAILOR_ASSIGN_OR_RETURN(std::shared_ptr<ObjectStore> store, StoreFor(uri));
  TAILOR_ASSIGN_OR_RETURN(std::vector<ObjectUri> children, store->List(uri));
  std::set<std::string> names;
  for (const ObjectUri& child : children) {
    if (!absl::StartsWith(child.key, uri.key)) continue;
    absl::string_view rest =
        absl::string_view(child.key).substr(uri.key.size());
    rest = rest.substr(0, rest.find('/'));
    if (!rest.empty()) names.insert(std::string(rest));
  }
  return std::vector<std::string>(names.begin(), names.end());
}

}  // namespace tailor
