#ifndef TAILOR_FUSION_SHARD_BUNDLE_H_
#define TAILOR_FUSION_SHARD_BUNDLE_H_

// A shard bundle (issue #20): what one shard of a sharded fusion job
// computed, for `tailorctl assemble`. Torch-free. Layout of
// <shard dir>/shard-<index, 5 digits>-of-<count, 5 digits>/:
//   <plan index, 8 digits>.safetensors, <plan index>.fused
//                 the journal entries (journal.h) of the shard's fused
//                 tensors: fused stored bytes, patch entries, report row,
//                 warnings and error totals; per-tensor timings are 0
//   manifest.json {"format": "tailor-shard-bundle/1", "plan_sha256": ...,
//                  "shard": index, "shards": count,
//                  "items": [{"index": plan index, "name": tensor,
//                             "files": {file name: sha256 hex}}]}
// A bundle is staged beside its final name (.staging-<name>) and renamed
// into place complete; writing it again replaces it. Its bytes depend only
// on the plan and the share, never on timing or on a crash and rerun.
// In object storage (an s3:// shard dir) the same files lie under
// <prefix>shard-IIIII-of-NNNNN/, the manifest committed last.

#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "fusion/journal.h"
#include "nlohmann/json.hpp"
#include "storage/uri_resolver.h"

namespace tailor {

inline constexpr char kShardBundleFormat[] = "tailor-shard-bundle/1";

struct ShardBundleItem {
  int64_t index = 0;  // in the plan
  std::string name;   // the tensor
};

// Writes shard `index` of `count`'s bundle under `dir` from the entries of
// `journal` for `items` (each must be there: FAILED_PRECONDITION naming the
// tensor otherwise). Files are hard-linked from the journal where the file
// system allows, copied otherwise; the manifest records their sha256.
absl::Status WriteShardBundle(const std::string& dir, int index, int count,
                              const std::string& plan_sha256,
                              const FusionJournal& journal,
                              const std::vector<ShardBundleItem>& items);

// The same bundle in object storage (shard_bundle_remote.cc): under
// `prefix` (a canonical s3:// URI ending in '/', checked against the allowed
// roots of `resolver`) as <prefix>shard-IIIII-of-NNNNN/<file>. Staged in the
// resolver's scratch directory (util/staged_output.h), every file is
// uploaded before any is committed and manifest.json is committed last, so
// a bundle's manifest is visible only once all its files are; objects of
// an earlier bundle of this shard that this one lacks are deleted after.
absl::Status UploadShardBundle(const UriResolver& resolver,
                               const std::string& prefix, int index, int count,
                               const std::string& plan_sha256,
                               const FusionJournal& journal,
                               const std::vector<ShardBundleItem>& items);

// Opens the `count` bundles under `dir` for reading, one per shard, after
// checking them: every shard-* directory there must be a complete bundle of
// this plan (`plan_sha256`) and shard count under its own name (a foreign
// one is FAILED_PRECONDITION naming it), no shard may appear twice
// (ALREADY_EXISTS naming both), none may be missing (NOT_FOUND naming
// it), each must hold exactly the tensors `expected[shard]` and every file
// must match its recorded sha256 (DATA_LOSS naming it).
absl::StatusOr<std::vector<std::unique_ptr<FusionJournal>>> OpenShardBundles(
    const std::string& dir, int count, const std::string& plan_sha256,
    const std::vector<std::vector<ShardBundleItem>>& expected);

// The same for the bundles under object-storage `prefix` (as for
// UploadShardBundle; shard_bundle_remote.cc): the manifest of every
// shard-* bundle there is read (ranged reads through the resolver's store)
// into local directory `local_dir` (emptied first) and checked as
// OpenShardBundles checks a directory's, then the files each lists are read
// and checked against their sha256; messages name the objects
// (<prefix>shard-...). The local copies are what the journals read.
absl::StatusOr<std::vector<std::unique_ptr<FusionJournal>>>
OpenRemoteShardBundles(
    const UriResolver& resolver, const std::string& prefix,
    const std::string& local_dir, int count, const std::string& plan_sha256,
    const std::vector<std::vector<ShardBundleItem>>& expected);

namespace shard_bundle_internal {

inline constexpr char kManifestName[] = "manifest.json";
inline constexpr uint64_t kMaxManifestBytes = 64 << 20;

// Fills empty directory `staging` with the bundle WriteShardBundle writes.
absl::Status FillShardBundle(const std::string& staging, int index, int count,
                             const std::string& plan_sha256,
                             const FusionJournal& journal,
                             const std::vector<ShardBundleItem>& items);

// A bundle whose manifest passed CheckShardManifests.
struct FoundBundle {
  std::string path;   // the local directory
  std::string shown;  // what messages call it (the path, or its URI)
  nlohmann::json manifest;
};

// The manifest checks of OpenShardBundles over the shard-* directories
// under `dir` (their files are not read): the bundle of each shard, in
// shard order. Messages name `shown_root` + the bundle's name when
// `shown_root` is set (the URI prefix the bundles came from).
absl::StatusOr<std::vector<FoundBundle>> CheckShardManifests(
    const std::string& dir, const std::string& shown_root, int count,
    const std::string& plan_sha256,
    const std::vector<std::vector<ShardBundleItem>>& expected);

// The files `bundle`'s manifest lists, as (file name, sha256 hex).
std::vector<std::pair<std::string, std::string>> ManifestFiles(
    const FoundBundle& bundle);

// Every file of `bundle` matches its sha256 (DATA_LOSS naming it).
absl::Status VerifyShardFiles(const FoundBundle& bundle);

}  // namespace shard_bundle_internal

}  // namespace tailor

#endif  // TAILOR_FUSION_SHARD_BUNDLE_H_
