#include "fusion/shard_plan.h"

#include <algorithm>
#include <numeric>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "util/file_util.h"

namespace tailor {

absl::Status ValidateShardIndex(int index, int count,
                                const std::string& index_flag,
                                const std::string& count_flag) {
  if (count < 1 || count > kMaxShards) {
    return absl::InvalidArgumentError(absl::StrCat(
        count_flag, ": must be in 1..", kMaxShards, ", not ", count));
  }
  if (index < 0 || index >= count) {
    return absl::InvalidArgumentError(
        absl::StrCat(index_flag, ": must be in 0..", count - 1, " (",
                     count_flag, " is ", count, "), not ", index));
  }
  return absl::OkStatus();
}

std::string ShardBundleName(int index, int count) {
  return absl::StrFormat("shard-%05d-of-%05d", index, count);
}

std::string ShardBundleDir(const std::string& dir, int index, int count) {
  return JoinPath(dir, ShardBundleName(index, count));
}

std::string ShardJournalDir(const std::string& dir, int index, int count) {
  return JoinPath(dir,
                  absl::StrCat(".journal-", ShardBundleName(index, count)));
}

std::vector<int> AssignShards(const std::vector<ShardCostItem>& items,
                              int count) {
  std::vector<size_t> order(items.size());
  std::iota(order.begin(), order.end(), size_t{0});
  std::sort(order.begin(), order.end(), [&](size_t a, size_t b) {
    const ShardCostItem& x = items[a];
    const ShardCostItem& y = items[b];
    if (x.cost != y.cost) return x.cost > y.cost;
    if (x.bytes != y.bytes) return x.bytes > y.bytes;
    if (x.name != y.name) return x.name < y.name;
    return x.plan_index < y.plan_index;
  });
  std::vector<int> shard(items.size(), 0);
  std::vector<int64_t> load(std::max(count, 1), 0);
  for (size_t i : order) {
    const int least = static_cast<int>(
        std::min_element(load.begin(), load.end()) - load.begin());
    shard[i] = least;
    // At least 1 per item: zero-cost items still spread by count.
    load[least] += std::max<int64_t>(items[i].cost, 1);
  }
  return shard;
}

}  // namespace tailor
