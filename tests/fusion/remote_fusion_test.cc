// Fusion jobs over object storage (issue #16 points 3, 8, 9), with the
// in-memory store: s3:// inputs to s3:// outputs give the bytes a local run
// gives; a failed upload leaves nothing visible; a patch made from remote
// inputs applies to the same checkpoint on local disk.

#include <ATen/ATen.h>
#include <gtest/gtest.h>
#include <sys/stat.h>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "fusion/apply_patch.h"
#include "fusion/fusion_job.h"
#include "fusion/output_plan.h"
#include "testing/memory_object_store.h"
#include "testing/test_util.h"
#include "util/file_util.h"

namespace tailor {
namespace {

using ::tailor::testing::MemoryObjectStore;
using ::tailor::testing::MemoryStoreProvider;
using ::tailor::testing::ReadFileOrDie;
using ::tailor::testing::TempDir;
using ::tailor::testing::ToRaw;
using ::tailor::testing::WriteFileOrDie;
using ::tailor::testing::WriteShardedCheckpoint;

class RemoteFusionTest : public ::testing::Test {
 protected:
  RemoteFusionTest() {
    base_ = Dir("base");
    ft_ = Dir("ft");
    at::manual_seed(7);
    std::map<std::string, at::Tensor> w = {
        {"model.layers.0.mlp.up_proj.weight", at::randn({16, 8})},
        {"model.layers.0.self_attn.q_proj.weight", at::randn({8, 8})}};
    std::vector<::tailor::testing::RawTensor> a, b, fa, fb;
    for (const auto& [name, t] : w) {
      const bool mlp = absl::StrContains(name, "mlp");
      (mlp ? b : a).push_back(ToRaw(name, t.to(at::kBFloat16)));
      (mlp ? fb : fa)
          .push_back(
              ToRaw(name, (t + 0.3 * at::randn(t.sizes())).to(at::kBFloat16)));
    }
    WriteShardedCheckpoint(base_, {a, b});
    WriteShardedCheckpoint(ft_, {fa, fb});
    WriteFileOrDie(JoinPath(base_, "config.json"), "{\"model_type\": \"x\"}");
    store_->PutTree(base_, "s3://bkt/in/base/");
    store_->PutTree(ft_, "s3://bkt/in/ft/");
    UriResolver::Remote remote;
    remote.provider = std::make_shared<MemoryStoreProvider>(store_);
    remote.scratch_dir = tmp_.Join("scratch");
    resolver_ = std::make_unique<UriResolver>(
        UriResolver::Create({tmp_.path(), "s3://bkt/in/", "s3://bkt/out/"}, {},
                            remote)
            .value());
  }
  std::string Dir(const std::string& name) {
    const std::string p = tmp_.Join(name);
    ::mkdir(p.c_str(), 0755);
    return p;
  }
  FusionSpec Spec(const std::string& pretrained, const std::string& ft,
                  const std::string& out_prefix) {
    FusionSpec spec;
    spec.method = Method::kMagnitude;
    spec.pretrained_uri = pretrained;
    TaskSpec task;
    task.finetuned_uri = ft;
    spec.tasks.push_back(task);
    spec.output_uri = out_prefix + "fused";
    spec.patch_uri = out_prefix + "fused.patch.safetensors";
    spec.report_uri = out_prefix + "report.json";
    spec.device = "cpu";
    return spec;
  }
  std::vector<std::string> OutKeys() {
    std::vector<std::string> out;
    for (const std::string& k : store_->Keys()) {
      if (absl::StartsWith(k, "s3://bkt/out/")) out.push_back(k);
    }
    return out;
  }

  TempDir tmp_;
  std::string base_, ft_;
  std::shared_ptr<MemoryObjectStore> store_ =
      std::make_shared<MemoryObjectStore>();
  std::unique_ptr<UriResolver> resolver_;
};

TEST_F(RemoteFusionTest, RemoteInputsToRemoteOutputsMatchALocalRun) {
  const FusionSpec local = Spec(base_, ft_, tmp_.path() + "/");
  auto local_report = RunFusionJob(local, *resolver_);
  ASSERT_TRUE(local_report.ok()) << local_report.status();
  const FusionSpec remote =
      Spec("s3://bkt/in/base", "s3://bkt/in/ft/", "s3://bkt/out/");
  auto remote_report = RunFusionJob(remote, *resolver_);
  ASSERT_TRUE(remote_report.ok()) << remote_report.status();

  std::vector<std::string> names = ListDirectory(local.output_uri).value();
  ASSERT_GE(names.size(), 3u);  // two shards, the index, config.json
  for (const std::string& name : names) {
    std::string bytes;
    ASSERT_TRUE(store_->Get("s3://bkt/out/fused/" + name, &bytes)) << name;
    EXPECT_EQ(bytes, ReadFileOrDie(JoinPath(local.output_uri, name))) << name;
  }
  std::string patch;
  ASSERT_TRUE(store_->Get(remote.patch_uri, &patch));
  EXPECT_EQ(patch, ReadFileOrDie(local.patch_uri));
  std::string report;
  ASSERT_TRUE(store_->Get(remote.report_uri, &report));
  EXPECT_EQ(nlohmann::json::parse(report)["totals"]["kept"],
            (*local_report)["totals"]["kept"]);
  EXPECT_TRUE(store_->PendingUploads().empty());
  // The staging in the scratch directory is gone.
  EXPECT_TRUE(ListDirectory(tmp_.Join("scratch")).value().empty());

  // Point 8: the patch made from s3:// inputs applies to the local copy of
  // the base, giving the local fuse's bytes.
  WriteFileOrDie(tmp_.Join("remote.patch.safetensors"), patch);
  const std::string rebuilt = tmp_.Join("rebuilt");
  absl::Status applied = ApplyPatch(
      base_, tmp_.Join("remote.patch.safetensors"), rebuilt, false, *resolver_);
  ASSERT_TRUE(applied.ok()) << applied;
  ::tailor::testing::ExpectSameFiles(local.output_uri, rebuilt);

  // And apply-patch itself takes remote URIs, writing a remote output.
  applied = ApplyPatch("s3://bkt/in/base/", remote.patch_uri,
                       "s3://bkt/out/rebuilt", false, *resolver_);
  ASSERT_TRUE(applied.ok()) << applied;
  for (const std::string& name : names) {
    std::string bytes;
    ASSERT_TRUE(store_->Get("s3://bkt/out/rebuilt/" + name, &bytes)) << name;
    EXPECT_EQ(bytes, ReadFileOrDie(JoinPath(local.output_uri, name))) << name;
  }
}

TEST_F(RemoteFusionTest, AFailedUploadLeavesNoVisibleOutput) {
  for (int n : {1, 3, 6}) {
    store_->FailAppend(n, absl::UnavailableError("connection reset"));
    auto report = RunFusionJob(
        Spec("s3://bkt/in/base", "s3://bkt/in/ft", "s3://bkt/out/"),
        *resolver_);
    EXPECT_EQ(report.status().code(), absl::StatusCode::kUnavailable)
        << n << ": " << report.status();
    EXPECT_TRUE(OutKeys().empty()) << n << ": " << OutKeys().front();
    EXPECT_TRUE(store_->PendingUploads().empty()) << n;
    store_->FailAppend(0, absl::OkStatus());
  }
  // A commit failing half-way rolls the committed objects back.
  store_->FailCommit(2, absl::UnavailableError("503"));
  auto report = RunFusionJob(
      Spec("s3://bkt/in/base", "s3://bkt/in/ft", "s3://bkt/out/"), *resolver_);
  EXPECT_FALSE(report.ok());
  EXPECT_TRUE(OutKeys().empty());
  EXPECT_TRUE(store_->PendingUploads().empty());
}

TEST_F(RemoteFusionTest, ACancelledJobLeavesNoVisibleOutput) {
  std::atomic<bool> cancel{true};
  RunOptions options;
  options.cancel = &cancel;
  auto report =
      RunFusionJob(Spec("s3://bkt/in/base", "s3://bkt/in/ft", "s3://bkt/out/"),
                   *resolver_, options);
  EXPECT_FALSE(report.ok());
  EXPECT_TRUE(OutKeys().empty());
  EXPECT_TRUE(store_->PendingUploads().empty());
}

TEST_F(RemoteFusionTest, ExistingOutputsFollowTheOverwriteRule) {
  store_->Put("s3://bkt/out/report.json", "old");
  FusionSpec spec = Spec("s3://bkt/in/base", "s3://bkt/in/ft", "s3://bkt/out/");
  auto refused = RunFusionJob(spec, *resolver_);
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kAlreadyExists)
      << refused.status();
  std::string bytes;
  ASSERT_TRUE(store_->Get("s3://bkt/out/report.json", &bytes));
  EXPECT_EQ(bytes, "old");
  EXPECT_FALSE(store_->Has("s3://bkt/out/fused/model.safetensors.index.json"));
  spec.overwrite = true;
  auto replaced = RunFusionJob(spec, *resolver_);
  ASSERT_TRUE(replaced.ok()) << replaced.status();
  ASSERT_TRUE(store_->Get("s3://bkt/out/report.json", &bytes));
  EXPECT_NE(bytes, "old");
}

TEST_F(RemoteFusionTest, OutputPlanRulesHoldForRemoteOutputs) {
  // An output that is (or contains) a remote root.
  FusionSpec spec = Spec("s3://bkt/in/base", "s3://bkt/in/ft", "s3://bkt/out/");
  spec.output_uri = "s3://bkt/out";
  auto plan = ResolveOutputPlan(spec, *resolver_);
  ASSERT_TRUE(plan.ok()) << plan.status();
  EXPECT_EQ(CheckOutputPlan(*plan, *resolver_).code(),
            absl::StatusCode::kPermissionDenied);
  // An output over an input.
  spec = Spec("s3://bkt/in/base", "s3://bkt/in/ft", "s3://bkt/in/base/");
  plan = ResolveOutputPlan(spec, *resolver_);
  ASSERT_TRUE(plan.ok()) << plan.status();
  EXPECT_EQ(CheckOutputPlan(*plan, *resolver_).code(),
            absl::StatusCode::kInvalidArgument);
  // Outside every remote root.
  spec = Spec("s3://bkt/in/base", "s3://bkt/in/ft", "s3://bkt/elsewhere/");
  EXPECT_EQ(ResolveOutputPlan(spec, *resolver_).status().code(),
            absl::StatusCode::kPermissionDenied);
}

}  // namespace
}  // namespace tailor
