// Sharding one fusion job (issue #20): three shard runs (RunOptions::shard,
// each as a separate run over its own copy of the plan) plus assemble give
// the outputs of a single run byte for byte; a shard cancelled midway and
// run again writes the same bundle; a missing, duplicated or foreign
// bundle makes assemble fail naming it, publishing nothing. The same with
// the bundles in object storage (the in-memory store): a bundle is visible
// only once complete, assemble checks it as a directory's.

#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <cstdio>
#include <map>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "fusion/fusion_job.h"
#include "fusion/shard_plan.h"
#include "testing/cancel_after.h"
#include "testing/memory_object_store.h"
#include "testing/shard_inputs.h"
#include "testing/test_util.h"
#include "util/file_util.h"

namespace tailor {
namespace {

using ::tailor::testing::CancelAfter;
using ::tailor::testing::ExpectSameFiles;
using ::tailor::testing::MemoryObjectStore;
using ::tailor::testing::MemoryStoreProvider;
using ::tailor::testing::ReadFileOrDie;
using ::tailor::testing::TempDir;
using ::tailor::testing::WithoutRunFacts;
using ::tailor::testing::WriteFileOrDie;

constexpr int64_t kHidden = 16, kInter = 24;
constexpr int kShards = 3;
constexpr char kRemoteRoot[] = "s3://bkt/jobs/";

class ShardTest : public ::testing::Test {
 protected:
  void SetUp() override {
    const ::tailor::testing::ShardInputs in =
        ::tailor::testing::WriteShardInputs(tmp_, kHidden, kInter);
    base_ = in.base;
    ft_ = in.finetuned;
    hessians_ = in.hessians;
    out_ = tmp_.Join("out");
    patch_ = tmp_.Join("p.safetensors");
    report_ = tmp_.Join("report.json");
    shard_dir_ = tmp_.Join("shards");
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
    UriResolver::Remote remote;
    std::vector<std::string> roots = {tmp_.path()};
    if (store_ != nullptr) {
      remote.provider = std::make_shared<MemoryStoreProvider>(store_);
      remote.scratch_dir = tmp_.Join("scratch");
      roots.push_back(kRemoteRoot);
    }
    auto resolver = UriResolver::Create(roots, {}, remote);
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
    if (!remote_.empty() && dir.empty()) {
      // Each shard on a machine of its own: a scratch directory each.
      s.remote = remote_;
      s.dir = tmp_.Join(absl::StrCat("machine", index));
    }
    EXPECT_TRUE(MakeDirectories(s.dir).ok());
    return s;
  }

  ShardOptions Assemble() {
    ShardOptions s;
    s.role = ShardOptions::Role::kAssemble;
    s.count = kShards;
    s.dir = shard_dir_;
    if (!remote_.empty()) {
      s.remote = remote_;
      s.dir = tmp_.Join("assembler");
    }
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
  // Set by the object-storage cases: the shards' bundles go to remote_
  // (under kRemoteRoot) in store_.
  std::shared_ptr<MemoryObjectStore> store_;
  std::string remote_;
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

// Bundles in object storage (--shard-dir s3://...): each shard on its own
// machine (its own scratch directory), assemble on another.
class ShardRemoteTest : public ShardTest {
 protected:
  void SetUp() override {
    ShardTest::SetUp();
    store_ = std::make_shared<MemoryObjectStore>();
    remote_ = absl::StrCat(kRemoteRoot, "run1/");
  }
  std::string BundleUri(int i) const {
    return absl::StrCat(remote_, ShardBundleName(i, kShards), "/");
  }
  // The keys of the visible objects under `prefix`.
  std::vector<std::string> KeysUnder(const std::string& prefix) const {
    std::vector<std::string> keys;
    for (const std::string& k : store_->Keys()) {
      if (absl::StartsWith(k, prefix)) keys.push_back(k);
    }
    return keys;
  }
  void RunShards() {
    for (int i = 0; i < kShards; ++i) {
      absl::StatusOr<nlohmann::json> r = Run(TailorSpec(), Shard(i));
      ASSERT_TRUE(r.ok()) << r.status();
      EXPECT_EQ((*r)["shard"]["bundle"], BundleUri(i));
    }
  }
  // Assemble fails with `code`, naming `what`, and publishes nothing.
  void ExpectAssembleFails(absl::StatusCode code, const std::string& what) {
    absl::StatusOr<nlohmann::json> r = Run(TailorSpec(), Assemble());
    ASSERT_FALSE(r.ok());
    EXPECT_EQ(r.status().code(), code) << r.status();
    EXPECT_TRUE(absl::StrContains(r.status().message(), what)) << r.status();
    for (const std::string& f : Outputs(TailorSpec())) {
      EXPECT_FALSE(PathExists(f)) << f;
    }
  }
};

TEST_F(ShardRemoteTest, TailorShardedThroughObjectStorageEqualsSingleRun) {
  ExpectShardedEqualsSingle(TailorSpec());
  for (int i = 0; i < kShards; ++i) {
    EXPECT_TRUE(store_->Has(BundleUri(i) + "manifest.json")) << i;
    EXPECT_GT(KeysUnder(BundleUri(i)).size(), 1u) << i;
  }
  EXPECT_TRUE(store_->PendingUploads().empty());
  // Assemble read the bundles through the store.
  EXPECT_GT(store_->range_reads(), 0u);
}

TEST_F(ShardRemoteTest, ABundleIsVisibleOnlyWhenComplete) {
  // The upload fails: nothing of the bundle is visible, nothing pending.
  store_->FailAppend(1, absl::UnavailableError("injected"));
  absl::StatusOr<nlohmann::json> r = Run(TailorSpec(), Shard(0));
  ASSERT_FALSE(r.ok());
  EXPECT_TRUE(absl::StrContains(r.status().message(), "injected"))
      << r.status();
  EXPECT_TRUE(KeysUnder(BundleUri(0)).empty());
  EXPECT_TRUE(store_->PendingUploads().empty());
  // Run again (its journal reused): the same bundle as a clean run's.
  r = Run(TailorSpec(), Shard(0));
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_GE((*r)["shard"]["resumed_tensors"].get<int64_t>(), 1);
  std::map<std::string, std::string> first;
  for (const std::string& k : KeysUnder(BundleUri(0))) {
    ASSERT_TRUE(store_->Get(k, &first[k]));
  }
  ASSERT_TRUE(RemoveAll(tmp_.Join("machine0")).ok());  // journal gone too
  ASSERT_TRUE(Run(TailorSpec(), Shard(0)).ok());
  std::map<std::string, std::string> again;
  for (const std::string& k : KeysUnder(BundleUri(0))) {
    ASSERT_TRUE(store_->Get(k, &again[k]));
  }
  EXPECT_EQ(first, again);
}

TEST_F(ShardRemoteTest, MissingDuplicatedForeignAndDamagedBundlesAreNamed) {
  RunShards();
  EXPECT_TRUE(Run(TailorSpec(), Assemble()).ok());
  for (const std::string& f : Outputs(TailorSpec())) {
    ASSERT_TRUE(RemoveAll(f).ok());
  }
  // Duplicated: shard 1's objects again under another name.
  for (const std::string& k : KeysUnder(BundleUri(1))) {
    std::string bytes;
    ASSERT_TRUE(store_->Get(k, &bytes));
    store_->Put(absl::StrCat(remote_, "shard-00001-copy/",
                             k.substr(BundleUri(1).size())),
                bytes);
  }
  ExpectAssembleFails(
      absl::StatusCode::kAlreadyExists,
      absl::StrCat("shard 1 of 3 is duplicated: ", remote_, "shard-00001"));
  for (const std::string& k : KeysUnder(remote_ + "shard-00001-copy/")) {
    ASSERT_TRUE(store_->Delete(ParseObjectUri(k).value()).ok());
  }
  // Damaged: one tensor file of shard 2 changed.
  std::string victim;
  for (const std::string& k : KeysUnder(BundleUri(2))) {
    if (absl::EndsWith(k, ".safetensors")) victim = k;
  }
  ASSERT_FALSE(victim.empty());
  std::string bytes;
  ASSERT_TRUE(store_->Get(victim, &bytes));
  std::string damaged = bytes;
  damaged[damaged.size() - 1] ^= 1;
  store_->Put(victim, damaged);
  ExpectAssembleFails(
      absl::StatusCode::kDataLoss,
      absl::StrCat("bundle ", BundleUri(2).substr(0, BundleUri(2).size() - 1)));
  store_->Put(victim, bytes);
  // Incomplete (no manifest), then missing.
  ASSERT_TRUE(
      store_->Delete(ParseObjectUri(BundleUri(2) + "manifest.json").value())
          .ok());
  ExpectAssembleFails(absl::StatusCode::kFailedPrecondition, "incomplete");
  for (const std::string& k : KeysUnder(BundleUri(2))) {
    ASSERT_TRUE(store_->Delete(ParseObjectUri(k).value()).ok());
  }
  ExpectAssembleFails(absl::StatusCode::kNotFound,
                      absl::StrCat("shard 2 of 3 is missing: no bundle ",
                                   remote_, "shard-00002-of-00003"));
  // Foreign: shard 2 of another spec.
  ASSERT_TRUE(Run(TailorSpec(/*keep=*/0.3), Shard(2)).ok());
  ExpectAssembleFails(absl::StatusCode::kFailedPrecondition,
                      absl::StrCat("foreign bundle ", remote_));
}

TEST_F(ShardRemoteTest, AShardDirOutsideTheAllowedRootsIsRefused) {
  remote_ = "s3://other-bucket/shards/";
  absl::StatusOr<nlohmann::json> r = Run(TailorSpec(), Shard(0));
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), absl::StatusCode::kPermissionDenied)
      << r.status();
  EXPECT_TRUE(store_->Keys().empty());
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
