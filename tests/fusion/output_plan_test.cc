#include "fusion/output_plan.h"

#include <gtest/gtest.h>
#include <sys/stat.h>

#include "absl/strings/match.h"
#include "testing/test_util.h"
#include "util/file_util.h"

namespace tailor {
namespace {

using ::tailor::testing::TempDir;
using ::tailor::testing::WriteFileOrDie;

class OutputPlanTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ::mkdir(tmp_.Join("root").c_str(), 0755);
    ::mkdir(tmp_.Join("root/base").c_str(), 0755);
    ::mkdir(tmp_.Join("root/ft").c_str(), 0755);
    ::mkdir(tmp_.Join("root/data").c_str(), 0755);
    ::mkdir(tmp_.Join("root/dir").c_str(), 0755);
    WriteFileOrDie(tmp_.Join("root/h.safetensors"), "h");
    WriteFileOrDie(tmp_.Join("root/file"), "f");
    auto r = UriResolver::Create({tmp_.Join("root")}, {tmp_.Join("root/data")});
    ASSERT_TRUE(r.ok()) << r.status();
    resolver_.emplace(*std::move(r));
  }

  FusionSpec Spec() const {
    FusionSpec spec;
    spec.pretrained_uri = tmp_.Join("root/base");
    for (int i = 0; i < 2; ++i) {
      TaskSpec t;
      t.finetuned_uri = tmp_.Join("root/ft");
      t.hessian_uri = tmp_.Join("root/h.safetensors");
      spec.tasks.push_back(t);
    }
    spec.output_uri = tmp_.Join("root/out");
    spec.patch_uri = tmp_.Join("root/p.safetensors");
    spec.report_uri = tmp_.Join("root/r.json");
    return spec;
  }

  absl::Status Check(const FusionSpec& spec) const {
    absl::StatusOr<OutputPlan> plan = ResolveOutputPlan(spec, *resolver_);
    if (!plan.ok()) return plan.status();
    return CheckOutputPlan(*plan, *resolver_);
  }

  TempDir tmp_;
  std::optional<UriResolver> resolver_;
};

TEST_F(OutputPlanTest, AGoodPlanPassesAndListsPerTaskPatches) {
  absl::StatusOr<OutputPlan> plan = ResolveOutputPlan(Spec(), *resolver_);
  ASSERT_TRUE(plan.ok()) << plan.status();
  ASSERT_EQ(plan->outputs.size(), 5u);  // out, patch, two per-task, report
  EXPECT_EQ(plan->outputs[2].path, tmp_.Join("root/p.task0.safetensors"));
  EXPECT_EQ(plan->outputs[3].path, tmp_.Join("root/p.task1.safetensors"));
  EXPECT_TRUE(CheckOutputPlan(*plan, *resolver_).ok());
  auto dirs = StagingDirs(*plan);
  ASSERT_EQ(dirs.size(), 1u);
  EXPECT_EQ(dirs[0].first, tmp_.Join("root"));
  EXPECT_EQ(dirs[0].second.size(), 5u);
}

TEST_F(OutputPlanTest, EachRuleNamesTheFieldAndTheRule) {
  struct Case {
    std::function<void(FusionSpec&)> edit;
    absl::StatusCode code;
    std::string prefix, rule;
  };
  const auto denied = absl::StatusCode::kPermissionDenied;
  const auto invalid = absl::StatusCode::kInvalidArgument;
  const std::vector<Case> cases = {
      {[&](FusionSpec& s) { s.output_uri = tmp_.Join("root"); }, denied,
       "out:", "allowed root"},
      {[&](FusionSpec& s) { s.output_uri = tmp_.Join("root/data"); }, denied,
       "out:", "data directory"},
      {[&](FusionSpec& s) { s.patch_uri = tmp_.Join("root/data/jobs.db"); },
       denied, "patch_out:", "data directory"},
      {[&](FusionSpec& s) { s.output_uri = tmp_.Join("root/base"); }, invalid,
       "out:", "input pretrained"},
      {[&](FusionSpec& s) { s.output_uri = tmp_.Join("root/base/sub"); },
       invalid, "out:", "lies inside the job's input pretrained"},
      {[&](FusionSpec& s) { s.patch_uri = tmp_.Join("root/h.safetensors"); },
       invalid, "patch_out:", "input tasks[0].hessians"},
      {[&](FusionSpec& s) { s.patch_uri = s.output_uri; }, invalid,
       "patch_out:", "other output out"},
      {[&](FusionSpec& s) { s.report_uri = s.patch_uri; }, invalid,
       "report:", "other output patch_out"},
      {[&](FusionSpec& s) {
         s.report_uri = tmp_.Join("root/p.task1.safetensors");
       },
       invalid, "report:", "per-task patch"},
      {[&](FusionSpec& s) { s.report_uri = tmp_.Join("root/dir"); }, invalid,
       "report:", "not a regular file"},
      {[&](FusionSpec& s) { s.output_uri = tmp_.Join("root/file"); }, invalid,
       "out:", "not a directory"},
  };
  for (const Case& c : cases) {
    FusionSpec spec = Spec();
    c.edit(spec);
    absl::Status s = Check(spec);
    EXPECT_EQ(s.code(), c.code) << s;
    EXPECT_TRUE(absl::StartsWith(s.message(), c.prefix)) << s;
    EXPECT_TRUE(absl::StrContains(s.message(), c.rule)) << s;
  }
}

}  // namespace
}  // namespace tailor
