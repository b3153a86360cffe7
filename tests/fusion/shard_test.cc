// Sharding one fusion job (issue #20): three shard runs (RunOptions::shard,
// each as a separate run over its own copy of the plan) plus assemble give
// the outputs of a single run byte for byte; a shard cancelled midway and
// run again writes the same bundle; a missing, duplicated or foreign
// bundle makes assemble fail naming it, publishing nothing.

#include <ATen/ATen.h>
#include <gtest/gtest.h>
#include <sys/stat.h>

#include <cstdio>
#include <map>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "fusion/fusion_job.h"
#include "fusion/shard_plan.h"
#include "testing/cancel_after.h"
#include "testing/test_util.h"
#include "util/file_util.h"

namespace tailor {
namespace {

using ::tailor::testing::CancelAfter;
using ::tailor::testing::ExpectSameFiles;
using ::tailor::testing::RawTensor;
using ::tailor::testing::ReadFileOrDie;
using ::tailor::testing::SerializeSafetensors;
using ::tailor::testing::TempDir;
using ::tailor::testing::ToRaw;
using ::tailor::testing::WithoutRunFacts;
using ::tailor::testing::WriteFileOrDie;

constexpr int64_t kHidden = 16, kInter = 24;
constexpr int kShards = 3;

class ShardTest : public ::testing::Test {
 protected:
  void SetUp() override {
    at::manual_seed(11);
    base_ = Dir("base");
    std::map<std::string, at::Tensor> pre;
    for (int l = 0; l < 3; ++l) {
      const std::string p = absl::StrCat("model.layers.", l, ".");
      pre[p + "self_attn.q_proj.weight"] = at::randn({kHidden, kHidden});
      pre[p + "mlp.up_proj.weight"] = at::randn({kInter, kHidden});
      pre[p + "mlp.down_proj.weight"] = at::randn({kHidden, kInter});
    }
    pre["model.norm.weight"] = at::ones({kHidden});
    ::tailor::testing::WriteBf16TwoShardCheckpoint(base_, pre);
    for (int t = 0; t < 2; ++t) {
      std::map<std::string, at::Tensor> ft;
      for (auto& [name, w] : pre) ft[name] = w + 0.3 * at::randn(w.sizes());
      const std::string dir = Dir(absl::StrCat("ft", t));
      ::tailor::testing::WriteBf16TwoShardCheckpoint(dir, ft);
      ft_.push_back(dir);
      hessians_.push_back(WriteHessians(tmp_.Join(absl::StrCat("h", t))));
    }
    out_ = tmp_.Join("out");
    patch_ = tmp_.Join("p.safetensors");
    report_ = tmp_.Join("report.json");
    shard_dir_ = tmp_.Join("shards");
  }

  std::string Dir(const std::string& name) {
    const std::string p = tmp_.Join(name);
    ::mkdir(p.c_str(), 0755);
    return p;
  }

  std::string WriteHessians(const std::string& path) {
    std::vector<RawTensor> t;
    for (const char* name : {"model.layers.0.self_attn.q_proj.hessian",
                             "model.layers.2.mlp.up_proj.hessian"}) {
      at::Tensor x = at::randn({100, kHidden});
      t.push_back(ToRaw(name, (2.0 / 100 * x.t().matmul(x)).contiguous()));
    }
    WriteFileOrDie(path, SerializeSafetensors(
                             t, {{"format", "tailor-hessian/1"},
                                 {"nsamples", "100"},
                                 {"aliases",
                                  "{\"model.layers.1.self_attn.q_proj.weight\""
                                  ": \"model.layers.0.self_attn.q_proj."
                                  "hessian\"}"}}));
    return path;
  }

  // Model Tailor with Hessians, two tasks: fused checkpoint, stitched and
  // per-task patches, report.
  FusionSpec TailorSpec(double keep = 0.2) {
    FusionSpec spec;
    spec.pretrained_uri = base_;
    for (int t = 0; t < 2; ++t) {
      TaskSpec task;
      task.label = absl::StrCat("t", t);
      task.finetuned_uri = ft_[t];
      task.hessian_uri = hessians_[t];
      spec.tasks.push_back(task);
    }
    spec.tailor.keep_ratio = keep;
    spec.output_uri = out_;
    spec.patch_uri = patch_;
    spec.report_uri = report_;
    spec.device = "cpu";
    return spec;
  }

  absl::StatusOr<nlohmann::json> Run(const FusionSpec& spec,
                                     ShardOptions shard = {},
                                     CancelAfter* sink = nullptr) {
    auto resolver = UriResolver::Create({tmp_.path()});
    if (!resolver.ok()) return resolver.status();
    RunOptions options;
    options.shard = std::move(shard);
    options.progress = sink;
    options.cancel = sink == nullptr ? nullptr : &sink->cancel;
    options.stream_chunk_elements = 64;  // several chunks per tensor
    // One worker when a test cancels midway (between two tensors).
    options.workers = sink == nullptr ? 2 : 1;
    return RunFusionJob(spec, *resolver, options);
  }

  ShardOptions Shard(int index, const std::string& dir = "") {
    ShardOptions s;
    s.role = ShardOptions::Role::kShard;
    s.index = index;
    s.count = kShards;
    s.dir = dir.empty() ? shard_dir_ : dir;
    EXPECT_TRUE(MakeDirectories(s.dir).ok());
    return s;
  }

  ShardOptions Assemble() {
    ShardOptions s;
    s.role = ShardOptions::Role::kAssemble;
    s.count = kShards;
    s.dir = shard_dir_;
    return s;
  }

  // Every output file of `spec`, for moving aside.
  std::vector<std::string> Outputs(const FusionSpec& spec) const {
    std::vector<std::string> files = {out_, report_};
    if (!spec.patch_uri.empty()) {
      files.push_back(patch_);
      if (spec.tasks.size() > 1 && spec.tasks[0].patch_uri.empty()) {
        files.push_back(tmp_.Join("p.t0.safetensors"));
        files.push_back(tmp_.Join("p.t1.safetensors"));
      }
    }
    return files;
  }

  // A single run, then the three shards and assemble at the same paths:
  // the same bytes everywhere, the same report but for the run facts
  // (timings, resumed count, devices).
  void ExpectShardedEqualsSingle(const FusionSpec& spec) {
    absl::StatusOr<nlohmann::json> single = Run(spec);
    ASSERT_TRUE(single.ok()) << single.status();
    for (const std::string& f : Outputs(spec)) {
      ASSERT_EQ(std::rename(f.c_str(), (f + ".single").c_str()), 0) << f;
    }
    for (int i = 0; i < kShards; ++i) {
      absl::StatusOr<nlohmann::json> shard = Run(spec, Shard(i));
      ASSERT_TRUE(shard.ok()) << shard.status();
      EXPECT_GT((*shard)["shard"]["tensors"].get<int64_t>(), 0) << i;
      // A shard writes none of the spec's outputs.
      for (const std::string& f : Outputs(spec)) {
        EXPECT_FALSE(PathExists(f)) << f << " after shard " << i;
      }
    }
    absl::StatusOr<nlohmann::json> assembled = Run(spec, Assemble());
    ASSERT_TRUE(assembled.ok()) << assembled.status();
    ExpectSameFiles(out_ + ".single", out_);
    for (const std::string& f : Outputs(spec)) {
      if (f == out_ || f == report_) continue;  // reports: below
      EXPECT_EQ(ReadFileOrDie(f + ".single"), ReadFileOrDie(f)) << f;
    }
    EXPECT_EQ(WithoutRunFacts(*single), WithoutRunFacts(*assembled));
    EXPECT_EQ(WithoutRunFacts(nlohmann::json::parse(ReadFileOrDie(report_))),
              WithoutRunFacts(
                  nlohmann::json::parse(ReadFileOrDie(report_ + ".single"))));
    EXPECT_GT((*assembled)["totals"]["tensors_fused"].get<int64_t>(), kShards);
  }

  TempDir tmp_;
  std::string base_, out_, patch_, report_, shard_dir_;
  std::vector<std::string> ft_, hessians_;
};

TEST_F(ShardTest, TailorWithHessiansShardedEqualsSingleRun) {
  ExpectShardedEqualsSingle(TailorSpec());
}

TEST_F(ShardTest, TiesShardedEqualsSingleRun) {
  FusionSpec spec = TailorSpec();
  spec.method = Method::kTies;
  spec.density = 0.3;
  for (TaskSpec& t : spec.tasks) t.hessian_uri.clear();
  spec.patch_uri.clear();  // TIES streams the fused checkpoint
  ExpectShardedEqualsSingle(spec);
}

TEST_F(ShardTest, TwoTaskStitchOfPatchesShardedEqualsSingleRun) {
  // Per-task patches of an earlier job, stitched (every tensor streams).
  ASSERT_TRUE(Run(TailorSpec()).ok());
  FusionSpec spec = TailorSpec();
  for (int t = 0; t < 2; ++t) {
    const std::string from = tmp_.Join(absl::StrCat("p.t", t, ".safetensors"));
    const std::string to = tmp_.Join(absl::StrCat("task", t, ".safetensors"));
    ASSERT_EQ(std::rename(from.c_str(), to.c_str()), 0);
    spec.tasks[t].finetuned_uri.clear();
    spec.tasks[t].hessian_uri.clear();
    spec.tasks[t].patch_uri = to;
  }
  ASSERT_TRUE(RemoveAll(out_).ok() && RemoveAll(patch_).ok() &&
              RemoveAll(report_).ok());
  ExpectShardedEqualsSingle(spec);
}

TEST_F(ShardTest, ShardCancelledAndRunAgainWritesTheSameBundle) {
  const FusionSpec spec = TailorSpec();
  const std::string ref_dir = tmp_.Join("ref-shards");
  ASSERT_TRUE(Run(spec, Shard(0, ref_dir)).ok());
  CancelAfter killer(1);
  absl::StatusOr<nlohmann::json> killed = Run(spec, Shard(0), &killer);
  ASSERT_TRUE(absl::IsCancelled(killed.status())) << killed.status();
  EXPECT_FALSE(PathExists(ShardBundleDir(shard_dir_, 0, kShards)));
  absl::StatusOr<nlohmann::json> rerun = Run(spec, Shard(0));
  ASSERT_TRUE(rerun.ok()) << rerun.status();
  EXPECT_GE((*rerun)["shard"]["resumed_tensors"].get<int64_t>(), 1);
  ExpectSameFiles(ShardBundleDir(ref_dir, 0, kShards),
                  ShardBundleDir(shard_dir_, 0, kShards));
  // And once more over a complete bundle: replaced by the same bytes.
  ASSERT_TRUE(Run(spec, Shard(0)).ok());
  ExpectSameFiles(ShardBundleDir(ref_dir, 0, kShards),
                  ShardBundleDir(shard_dir_, 0, kShards));
}

class ShardBundleErrorTest : public ShardTest {
 protected:
  void SetUp() override {
    ShardTest::SetUp();
    for (int i = 0; i < kShards; ++i) {
      ASSERT_TRUE(Run(TailorSpec(), Shard(i)).ok());
    }
  }
  std::string Bundle(int i) const {
    return ShardBundleDir(shard_dir_, i, kShards);
  }
  // Assemble fails with `code`, naming `what`, and publishes nothing.
  void ExpectAssembleFails(absl::StatusCode code, const std::string& what) {
    absl::StatusOr<nlohmann::json> r = Run(TailorSpec(), Assemble());
    ASSERT_FALSE(r.ok());
    EXPECT_EQ(r.status().code(), code) << r.status();
    EXPECT_TRUE(absl::StrContains(r.status().message(), what)) << r.status();
    EXPECT_LT(r.status().message().size(), 1200u);
    for (const std::string& f : Outputs(TailorSpec())) {
      EXPECT_FALSE(PathExists(f)) << f;
    }
  }
};

TEST_F(ShardBundleErrorTest, AllBundlesAssemble) {
  EXPECT_TRUE(Run(TailorSpec(), Assemble()).ok());
}

TEST_F(ShardBundleErrorTest, MissingBundleIsNamed) {
  ASSERT_TRUE(RemoveAll(Bundle(2)).ok());
  ExpectAssembleFails(absl::StatusCode::kNotFound, "shard 2 of 3 is missing");
}

TEST_F(ShardBundleErrorTest, DuplicatedBundleIsNamed) {
  const std::string copy = JoinPath(shard_dir_, "shard-00001-copy");
  ASSERT_TRUE(MakeDirectories(copy).ok());
  auto names = ListDirectory(Bundle(1));
  ASSERT_TRUE(names.ok());
  for (const std::string& n : *names) {
    ASSERT_TRUE(
        CopyFileDurably(JoinPath(Bundle(1), n), JoinPath(copy, n)).ok());
  }
  ExpectAssembleFails(absl::StatusCode::kAlreadyExists,
                      "shard 1 of 3 is duplicated");
}

TEST_F(ShardBundleErrorTest, ForeignBundleOfAnotherSpecIsNamed) {
  const std::string other = tmp_.Join("other");
  ASSERT_TRUE(Run(TailorSpec(/*keep=*/0.3), Shard(0, other)).ok());
  ASSERT_TRUE(RemoveAll(Bundle(0)).ok());
  ASSERT_EQ(
      std::rename(ShardBundleDir(other, 0, kShards).c_str(), Bundle(0).c_str()),
      0);
  ExpectAssembleFails(absl::StatusCode::kFailedPrecondition,
                      absl::StrCat("foreign bundle ", Bundle(0)));
}

TEST_F(ShardBundleErrorTest, BundleOfAnotherShardCountIsNamed) {
  ShardOptions two = Shard(0);
  two.count = 2;
  ASSERT_TRUE(Run(TailorSpec(), two).ok());
  ExpectAssembleFails(absl::StatusCode::kFailedPrecondition,
                      ShardBundleDir(shard_dir_, 0, 2));
}

TEST_F(ShardBundleErrorTest, DamagedBundleFileIsNamed) {
  auto names = ListDirectory(Bundle(1));
  ASSERT_TRUE(names.ok());
  std::string victim;
  for (const std::string& n : *names) {
    if (absl::EndsWith(n, ".safetensors")) victim = n;
  }
  ASSERT_FALSE(victim.empty());
  // Replaced (not written through: the journal shares the inode).
  const std::string path = JoinPath(Bundle(1), victim);
  std::string bytes = ReadFileOrDie(path);
  bytes[bytes.size() - 1] ^= 1;
  ASSERT_TRUE(RemoveAll(path).ok());
  WriteFileOrDie(path, bytes);
  ExpectAssembleFails(absl::StatusCode::kDataLoss, victim);
}

TEST(ShardPlanTest, SplitIsBalancedByCostAndDeterministic) {
  std::vector<ShardCostItem> items;
  // One costly item and many cheap ones: by count shard 0 would get 4.
  items.push_back({0, "big", 90, 0});
  for (int i = 1; i <= 9; ++i)
    items.push_back({i, absl::StrCat("s", i), 10, 0});
  const std::vector<int> a = AssignShards(items, 2);
  int64_t load[2] = {0, 0};
  for (size_t i = 0; i < items.size(); ++i) load[a[i]] += items[i].cost;
  EXPECT_EQ(load[0], 90);
  EXPECT_EQ(load[1], 90);
  std::vector<ShardCostItem> reversed(items.rbegin(), items.rend());
  const std::vector<int> b = AssignShards(reversed, 2);
  for (size_t i = 0; i < items.size(); ++i) {
    EXPECT_EQ(a[i], b[items.size() - 1 - i]) << items[i].name;
  }
}

TEST(ShardPlanTest, IndexErrorsNameTheFlag) {
  EXPECT_TRUE(ValidateShardIndex(2, 3, "--shard", "--shards").ok());
  absl::Status s = ValidateShardIndex(3, 3, "--shard", "--shards");
  EXPECT_TRUE(absl::StrContains(s.message(), "--shard: must be in 0..2")) << s;
  s = ValidateShardIndex(0, 0, "--shard", "--shards");
  EXPECT_TRUE(absl::StrContains(s.message(), "--shards: must be in 1..")) << s;
}

}  // namespace
}  // namespace tailor
