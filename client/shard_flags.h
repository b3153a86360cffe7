#ifndef TAILOR_CLIENT_SHARD_FLAGS_H_
#define TAILOR_CLIENT_SHARD_FLAGS_H_

// The sharding flags of `tailorctl fuse --local` (--shard, --shards,
// --shard-dir) and `tailorctl assemble` (--shards, --from), resolved into
// the engine's ShardOptions (fusion/shard_plan.h; issue #20).

#include <optional>
#include <string>

#include "absl/status/statusor.h"
#include "fusion/shard_plan.h"
#include "storage/uri_resolver.h"

namespace tailor::cli {

struct ShardFlags {
  bool assemble = false;      // `assemble` rather than `fuse`
  std::optional<int> shard;   // --shard
  std::optional<int> shards;  // --shards
  std::string dir;            // --shard-dir (fuse) or --from (assemble)
};

// fuse: no flag given is an ordinary run (Role::kNone). Otherwise --shards
// and --shard-dir are required; the index is --shard, else
// $JOB_COMPLETION_INDEX (a Kubernetes Indexed Job's), and 0 <= I < N.
// assemble: --shards and --from are required. The directory is a local or
// shared-volume path (or file:// URI) under the allowed roots, created for a
// shard; any other scheme (s3://) is UNIMPLEMENTED for now. Errors name the
// flag (or the variable) and the rule broken.
absl::StatusOr<ShardOptions> ResolveShardFlags(const ShardFlags& flags,
                                               const UriResolver& resolver);

}  // namespace tailor::cli

#endif  // TAILOR_CLIENT_SHARD_FLAGS_H_
