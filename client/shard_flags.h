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
// assemble: --shards and --from are required. The location is a local or
// shared-volume path (or file:// URI) under the allowed roots, created for a
// shard, or an s3:// prefix under the remote allowed roots (ShardOptions::
// remote; a trailing '/' is implied), whose local scratch directory is
// <scratch dir>/tailor-shards-<16 hex digits of the prefix's sha256> for a
// shard, ...tailor-assemble-<those digits>-<pid> for assemble (which the
// caller removes when it ends); any other scheme is INVALID_ARGUMENT. Errors
// name the flag (or the variable) and the rule broken.
absl::StatusOr<ShardOptions> ResolveShardFlags(const ShardFlags& flags,
                                               const UriResolver& resolver);

}  // namespace tailor::cli

#endif  // TAILOR_CLIENT_SHARD_FLAGS_H_
