#ifndef TAILOR_TESTS_TESTING_SHARD_INPUTS_H_
#define TAILOR_TESTS_TESTING_SHARD_INPUTS_H_

// The inputs of the sharding tests (issue #20; fusion/shard_test.cc
// in-process, client/shard_cli_test.cc as tailorctl processes): a small
// bf16 base, two fine-tunes of it and a calibration file for each.

#include <cstdint>
#include <string>
#include <vector>

#include "testing/temp_dir.h"

namespace tailor {
namespace testing {

struct ShardInputs {
  std::string base;                    // <tmp>/base
  std::vector<std::string> finetuned;  // <tmp>/ft0, <tmp>/ft1
  std::vector<std::string> hessians;   // <tmp>/h0, <tmp>/h1
};

// Writes, seeded (the same bytes every time): a two-file bf16 base of
// `layers` layers, each with q_proj [hidden, hidden], up_proj [inter,
// hidden] and down_proj [hidden, inter], plus model.norm.weight; two
// fine-tunes of it (base + 0.3 N(0, 1)); for each a tailor-hessian/1 file
// with Hessians for layer 0's q_proj and layer 2's up_proj (layers >= 3)
// and layer 1's q_proj aliased to layer 0's.
ShardInputs WriteShardInputs(const TempDir& tmp, int64_t hidden = 16,
                             int64_t inter = 24, int layers = 3);

}  // namespace testing
}  // namespace tailor

#endif  // TAILOR_TESTS_TESTING_SHARD_INPUTS_H_
