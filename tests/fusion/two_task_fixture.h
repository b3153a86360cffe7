#ifndef TAILOR_TESTS_FUSION_TWO_TASK_FIXTURE_H_
#define TAILOR_TESTS_FUSION_TWO_TASK_FIXTURE_H_

// The checkpoints of the journal and workers tests (fusion_journal_test,
// fusion_workers_test): a base and two fine-tuned checkpoints (BF16, two
// shards each) under a temporary directory, one calibration file per task.

#include <ATen/ATen.h>
#include <gtest/gtest.h>
#include <sys/stat.h>

#include <functional>
#include <map>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "testing/test_util.h"

namespace tailor::testing {

class TwoTaskTest : public ::testing::Test {
 protected:
  // Writes `pre` as the base ("base"), then for each task t the fine-tuned
  // pre + 0.3 * randn (in `pre`'s name order) as "ft<t>" and its
  // calibration file write_hessians(tmp_.Join("h<t>")), which returns the
  // path written. Sets base_, ft_ and hessians_.
  void WriteModels(
      const std::map<std::string, at::Tensor>& pre,
      const std::function<std::string(const std::string&)>& write_hessians) {
    base_ = Dir("base");
    WriteCheckpoint(base_, pre);
    for (int t = 0; t < 2; ++t) {
      std::map<std::string, at::Tensor> ft;
      for (auto& [name, w] : pre) ft[name] = w + 0.3 * at::randn(w.sizes());
      const std::string dir = Dir(absl::StrCat("ft", t));
      WriteCheckpoint(dir, ft);
      ft_.push_back(dir);
      hessians_.push_back(write_hessians(tmp_.Join(absl::StrCat("h", t))));
    }
  }

  // tmp_/name, created (0755) if missing.
  std::string Dir(const std::string& name) {
    const std::string p = tmp_.Join(name);
    ::mkdir(p.c_str(), 0755);
    return p;
  }

  void WriteCheckpoint(const std::string& dir,
                       const std::map<std::string, at::Tensor>& ts) {
    WriteBf16TwoShardCheckpoint(dir, ts);
  }

  TempDir tmp_;
  std::string base_;
  std::vector<std::string> ft_, hessians_;
};

}  // namespace tailor::testing

#endif  // TAILOR_TESTS_FUSION_TWO_TASK_FIXTURE_H_
