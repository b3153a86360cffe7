// Shard bundles in object storage (shard_bundle.h; issue #20): a bundle is
// staged locally and uploaded as one StagedOutput (util/staged_output.h),
// its manifest committed last; assemble reads the manifests, checks them as
// a directory's, then reads the files they list into a local copy.

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <map>
#include <utility>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "fusion/shard_bundle.h"
#include "fusion/shard_plan.h"
#include "util/errno_status.h"
#include "util/file_util.h"
#include "util/staged_output.h"
#include "util/status_macros.h"

namespace tailor {
namespace {

using shard_bundle_internal::kManifestName;
using shard_bundle_internal::kMaxManifestBytes;

constexpr uint64_t kReadChunk = 8 << 20;

// Reads object `uri` (at most `max_bytes`) into new local file `path` with
// ranged reads, each conditional on the object's etag.
absl::Status Download(ObjectStore& store, const ObjectUri& uri,
                      const std::string& path, uint64_t max_bytes) {
  TAILOR_ASSIGN_OR_RETURN(ObjectInfo info, store.Stat(uri));
  if (info.size > max_bytes) {
    return absl::InvalidArgumentError(
        absl::StrCat(uri.ToString(), ": ", info.size, " bytes, more than the ",
                     max_bytes, " allowed"));
  }
  ScopedFd fd(::open(path.c_str(),
                     O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC,
                     0644));
  if (!fd.valid()) return ErrnoError(errno, absl::StrCat("create ", path));
  std::string chunk;
  for (uint64_t offset = 0; offset < info.size; offset += chunk.size()) {
    chunk.resize(std::min<uint64_t>(kReadChunk, info.size - offset));
    TAILOR_RETURN_IF_ERROR(
        store.ReadRange(uri, info, offset, chunk.size(), chunk.data()));
    TAILOR_RETURN_IF_ERROR(
        PWriteFully(fd.get(), chunk.data(), chunk.size(), offset, path));
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status UploadShardBundle(const UriResolver& resolver,
                               const std::string& prefix, int index, int count,
                               const std::string& plan_sha256,
                               const FusionJournal& journal,
                               const std::vector<ShardBundleItem>& items) {
  TAILOR_ASSIGN_OR_RETURN(ObjectUri root,
                          resolver.CheckRemote(prefix, "--shard-dir"));
  TAILOR_ASSIGN_OR_RETURN(
      std::unique_ptr<StagedOutput> staged,
      CreateStagedOutput(root.Child(ShardBundleName(index, count)).ToString(),
                         StagedOutput::Kind::kDirectory, /*overwrite=*/true,
                         &resolver));
  TAILOR_RETURN_IF_ERROR(shard_bundle_internal::FillShardBundle(
      staged->staging_path(), index, count, plan_sha256, journal, items));
  // StagedOutput uploads (and commits) a directory's files in name order:
  // the tensors' files are named by their 8-digit plan index, so
  // manifest.json comes last.
  StagedOutput* const outputs[] = {staged.get()};
  return PublishAll(outputs);
}

absl::StatusOr<std::vector<std::unique_ptr<FusionJournal>>>
OpenRemoteShardBundles(
    const UriResolver& resolver, const std::string& prefix,
    const std::string& local_dir, int count, const std::string& plan_sha256,
    const std::vector<std::vector<ShardBundleItem>>& expected) {
  using shard_bundle_internal::FoundBundle;
  TAILOR_ASSIGN_OR_RETURN(ObjectUri root,
                          resolver.CheckRemote(prefix, "--from"));
  if (!root.key.empty() && !absl::EndsWith(root.key, "/")) root.key += '/';
  TAILOR_ASSIGN_OR_RETURN(std::shared_ptr<ObjectStore> store,
                          resolver.StoreFor(root));
  TAILOR_ASSIGN_OR_RETURN(std::vector<ObjectUri> keys, store->List(root));
  TAILOR_RETURN_IF_ERROR(RemoveAll(local_dir));
  TAILOR_RETURN_IF_ERROR(MakeDirectories(local_dir));
  // Every shard-* "directory" under the prefix, with its manifest if it has
  // one (a bundle without is reported incomplete, as a directory's).
  std::map<std::string, const ObjectUri*> manifests;
  for (const ObjectUri& uri : keys) {
    if (!absl::StartsWith(uri.key, root.key)) continue;
    const std::string rel = uri.key.substr(root.key.size());
    const size_t slash = rel.find('/');
    if (slash == std::string::npos) continue;
    const std::string name = rel.substr(0, slash);
    if (!absl::StartsWith(name, "shard-")) continue;
    manifests.emplace(name, nullptr);
    if (rel.substr(slash + 1) == kManifestName) manifests[name] = &uri;
  }
  for (const auto& [name, manifest] : manifests) {
    const std::string dir = JoinPath(local_dir, name);
    TAILOR_RETURN_IF_ERROR(MakeDirectories(dir));
    if (manifest == nullptr) continue;
    const absl::Status s = Download(
        *store, *manifest, JoinPath(dir, kManifestName), kMaxManifestBytes);
    if (!s.ok() && !absl::IsNotFound(s)) return s;
  }
  TAILOR_ASSIGN_OR_RETURN(
      std::vector<FoundBundle> found,
      shard_bundle_internal::CheckShardManifests(local_dir, root.ToString(),
                                                 count, plan_sha256, expected));
  std::vector<std::unique_ptr<FusionJournal>> bundles;
  for (const FoundBundle& bundle : found) {
    const ObjectUri dir = root.Child(Basename(bundle.path));
    for (const auto& [file, sha] :
         shard_bundle_internal::ManifestFiles(bundle)) {
      const absl::Status s = Download(
          *store, dir.Child(file), JoinPath(bundle.path, file), ~uint64_t{0});
      if (!s.ok()) {
        return absl::DataLossError(
            absl::StrCat("bundle ", bundle.shown, ": ", file,
                         " is unreadable: ", s.message()));
      }
    }
    TAILOR_RETURN_IF_ERROR(shard_bundle_internal::VerifyShardFiles(bundle));
    bundles.push_back(FusionJournal::OpenForReading(bundle.path));
  }
  return bundles;
}

}  // namespace tailor
