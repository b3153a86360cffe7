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

#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "fusion/journal.h"

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

}  // namespace tailor

#endif  // TAILOR_FUSION_SHARD_BUNDLE_H_
