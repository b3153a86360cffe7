#ifndef TAILOR_FUSION_SHARD_PLAN_H_
#define TAILOR_FUSION_SHARD_PLAN_H_

// Sharding one fusion job across machines (issue #20): which role a run
// plays (RunOptions::shard), where a shard's bundle lives under the shard
// directory, and the deterministic, cost-balanced split of the fused
// tensors among the shards. Torch-free.
//
// Every shard plans the whole job exactly as a single-machine run does,
// computes only the fused tensors of its share and writes them as a bundle
// (shard_bundle.h); `assemble` plans the job again, reads every fused
// tensor from the bundles (copied tensors it copies from the base itself)
// and publishes the spec's outputs: byte-identical to a single run.

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"

namespace tailor {

struct ShardOptions {
  enum class Role {
    kNone,      // an ordinary run
    kShard,     // compute share `index` of `count`, write its bundle to dir
    kAssemble,  // read the `count` bundles in dir, publish the outputs
  };
  Role role = Role::kNone;
  int index = 0;  // kShard: 0 <= index < count
  int count = 0;  // the number of shards, >= 1
  // A local (or shared-volume) directory, already resolved: holds
  // shard-<index>-of-<count>/ bundles and each shard's work journal.
  // With `remote` set, a local scratch directory instead: the shard's
  // journal and scratch writers, or assemble's copy of the bundles.
  std::string dir;
  // The bundles' object-storage prefix (canonical s3:// URI ending in '/',
  // inside the allowed roots), or empty: they are in `dir`.
  std::string remote;
};

// The most shards a job may be split into.
inline constexpr int kMaxShards = 10000;

// INVALID_ARGUMENT naming `index_flag` / `count_flag` unless
// 1 <= count <= kMaxShards and 0 <= index < count.
absl::Status ValidateShardIndex(int index, int count,
                                const std::string& index_flag,
                                const std::string& count_flag);

// "shard-00003-of-00008": a bundle's directory name under the shard dir.
std::string ShardBundleName(int index, int count);
// "<dir>/shard-00003-of-00008".
std::string ShardBundleDir(const std::string& dir, int index, int count);
// "<dir>/.journal-shard-00003-of-00008": the shard's work journal
// (RunOptions::journal_dir of a shard run), kept after the bundle is
// written (its files are hard links shared with the bundle where the file
// system allows) so that a rerun reuses it; remove it after assemble.
std::string ShardJournalDir(const std::string& dir, int index, int count);

// One fused tensor of the plan, as the split sees it.
struct ShardCostItem {
  int64_t plan_index = 0;
  std::string name;
  int64_t cost = 0;   // flop estimate (FusionRun::ExecutorItems)
  int64_t bytes = 0;  // working-memory estimate
};

// The shard (0..count-1) of each item, in the order given: greedy
// longest-processing-time over the items sorted by cost, then working
// bytes (both descending), then name and plan index -- each goes to the
// shard with the least cost so far (ties: the lowest index). The same items
// give the same split on every machine.
std::vector<int> AssignShards(const std::vector<ShardCostItem>& items,
                              int count);

}  // namespace tailor

#endif  // TAILOR_FUSION_SHARD_PLAN_H_
