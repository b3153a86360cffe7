// Issue #10: hostile specs and input files cost bounded work and get clear
// errors (points 6, 7, 8, 9, 11, 19, 21), through FusionSpec validation,
// RunFusionJob, ApplyPatch and the job runner's Prepare.

#include <ATen/ATen.h>
#include <gtest/gtest.h>
#include <sys/stat.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <future>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "fusion/apply_patch.h"
#include "fusion/fusion_job.h"
#include "fusion/fusion_spec.h"
#include "fusion/patch.h"
#include "io/safetensors_file.h"
#include "jobs/fusion_job_runner.h"
#include "storage/uri_resolver.h"
#include "testing/fifo.h"
#include "testing/test_util.h"
#include "util/file_util.h"

namespace tailor {
namespace {

using ::tailor::testing::MakeFifoOrDie;
using ::tailor::testing::ReadFileOrDie;
using ::tailor::testing::RunWithFifoGuard;
using ::tailor::testing::SerializeSafetensors;
using ::tailor::testing::TempDir;
using ::tailor::testing::ToRaw;
using ::tailor::testing::WriteFileOrDie;
using ::tailor::testing::WriteShardedCheckpoint;

constexpr char kQ[] = "model.layers.0.self_attn.q_proj.weight";
constexpr char kUp[] = "model.layers.0.mlp.up_proj.weight";
constexpr char kNorm[] = "model.norm.weight";

// Runs `fn` on another thread; if it has not finished after `limit` the
// test binary exits with a failure (a matcher that never returns cannot be
// interrupted, and a hung suite is worse than a failed one).
template <typename Fn>
auto WithDeadline(const char* what, Fn fn,
                  std::chrono::seconds limit = std::chrono::seconds(120)) {
  auto future = std::async(std::launch::async, std::move(fn));
  if (future.wait_for(limit) != std::future_status::ready) {
    std::fprintf(stderr, "FAILED: %s did not finish within %lld s\n", what,
                 static_cast<long long>(limit.count()));
    std::fflush(stderr);
    std::_Exit(1);
  }
  return future.get();
}

void ExpectInvalid(const absl::Status& s,
                   std::initializer_list<absl::string_view> parts) {
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
  for (absl::string_view p : parts) {
    EXPECT_TRUE(absl::StrContains(s.message(), p)) << p << " not in: " << s;
  }
}

class HostileInputTest : public ::testing::Test {
 protected:
  void SetUp() override {
    at::manual_seed(7);
    pre_ = {{kQ, at::randn({8, 8})},
            {kUp, at::randn({8, 8})},
            {kNorm, at::ones({8})}};
    base_ = WriteModel("base", pre_);
    std::map<std::string, at::Tensor> ft;
    for (auto& [name, w] : pre_) ft[name] = w + 0.2 * at::randn(w.sizes());
    ft_ = WriteModel("ft", ft);
  }

  std::string Dir(const std::string& name) {
    const std::string p = tmp_.Join(name);
    ::mkdir(p.c_str(), 0755);
    return p;
  }

  std::string WriteModel(const std::string& name,
                         const std::map<std::string, at::Tensor>& ts) {
    std::vector<::tailor::testing::RawTensor> raw;
    for (const auto& [n, t] : ts) raw.push_back(ToRaw(n, t));
    const std::string dir = Dir(name);
    WriteFileOrDie(JoinPath(dir, "model.safetensors"),
                   SerializeSafetensors(raw));
    return dir;
  }

  FusionSpec Spec(const std::string& name) {
    FusionSpec spec;
    spec.pretrained_uri = base_;
    TaskSpec task;
    task.label = "t0";
    task.finetuned_uri = ft_;
    spec.tasks.push_back(task);
    spec.report_uri = tmp_.Join(name + ".report.json");
    spec.device = "cpu";
    return spec;
  }

  absl::StatusOr<nlohmann::json> Run(const FusionSpec& spec) {
    auto resolver = UriResolver::Create({tmp_.path()});
    if (!resolver.ok()) return resolver.status();
    return RunFusionJob(spec, *resolver, RunOptions());
  }

  absl::Status Apply(const std::string& base, const std::string& patch,
                     const std::string& out) {
    auto resolver = UriResolver::Create({tmp_.path()});
    if (!resolver.ok()) return resolver.status();
    return ApplyPatch(base, patch, out, false, *resolver);
  }

  TempDir tmp_;
  std::map<std::string, at::Tensor> pre_;
  std::string base_, ft_;
};

// --- Point 6: 20,000 nested groups ------------------------------------------

TEST_F(HostileInputTest, DeeplyNestedIncludeIsRefusedAtValidation) {
  const std::string nested =
      absl::StrCat(std::string(20000, '('), "model", std::string(20000, ')'));
  FusionSpec spec = Spec("nested");
  spec.include = {nested};
  ExpectInvalid(spec.Validate(), {"include[0]", "1000 bytes"});
  EXPECT_LT(spec.Validate().message().size(), 600u);
  // The same through JSON (tailorctl submit / the server) and the engine.
  auto parsed = FusionSpec::FromJson(spec.ToJson());
  ASSERT_TRUE(parsed.ok()) << parsed.status();
  ExpectInvalid(parsed->Validate(), {"include[0]"});
  ExpectInvalid(Run(spec).status(), {"include[0]"});
  spec.include.clear();
  spec.exclude = {"ok", "(a)\\1"};
  ExpectInvalid(spec.Validate(), {"exclude[1]", "RE2"});
  spec.exclude = std::vector<std::string>(kMaxFilterPatterns + 1, "a");
  ExpectInvalid(spec.Validate(), {"exclude", "limit is 100"});
}

// --- Point 7: a 60,000-character tensor name --------------------------------

TEST_F(HostileInputTest, SixtyThousandCharacterNameWithAlternationIncludes) {
  std::string name(60000, 'a');
  for (size_t i = 0; i < name.size(); i += 2) name[i] = 'b';
  auto pre = pre_;
  pre[name] = at::randn({2, 2});
  base_ = WriteModel("base-long", pre);
  auto ft = pre;
  for (auto& [n, w] : ft) w = w + 0.5;
  ft_ = WriteModel("ft-long", ft);
  FusionSpec spec = Spec("long");
  spec.method = Method::kTaskArithmetic;
  spec.include = {"^(a|b)*$"};
  auto report = WithDeadline("include '^(a|b)*$' over a 60,000-byte name",
                             [&] { return Run(spec); });
  ASSERT_TRUE(report.ok()) << report.status().message().substr(0, 500);
  EXPECT_EQ((*report)["totals"]["tensors_fused"], 1);
  EXPECT_EQ((*report)["totals"]["tensors_copied"], 3);
  for (const auto& t : (*report)["tensors"]) {
    EXPECT_EQ(t["action"], t["name"] == name ? "fused" : "copied");
  }
}

// --- Point 8: an exponential-backtracking pattern ---------------------------

TEST_F(HostileInputTest, BacktrackingIncludeFinishesInLinearTime) {
  FusionSpec spec = Spec("dotdot");
  spec.method = Method::kTaskArithmetic;
  spec.include = {"^(.|.)*X$"};
  spec.exclude = {"(.*.*)*Y$"};
  auto report = WithDeadline("include '^(.|.)*X$' over LLaMA names",
                             [&] { return Run(spec); });
  ASSERT_TRUE(report.ok()) << report.status();
  EXPECT_EQ((*report)["totals"]["tensors_fused"], 0);
  EXPECT_EQ((*report)["totals"]["tensors_copied"], 3);
}

// --- Point 9: threads --------------------------------------------------------

TEST_F(HostileInputTest, ThreadsAreCapped) {
  FusionSpec spec = Spec("threads");
  spec.threads = 1000000;
  ExpectInvalid(spec.Validate(), {"threads", "[0, 256]", "1000000"});
  spec.threads = kMaxThreads + 1;
  ExpectInvalid(spec.Validate(), {"threads"});
  spec.threads = -1;
  ExpectInvalid(spec.Validate(), {"threads"});
  spec.threads = kMaxThreads;
  EXPECT_TRUE(spec.Validate().ok());
  // 2^32 + 1 must not wrap to 1 on the way in.
  nlohmann::json j = Spec("threads").ToJson();
  j["threads"] = 4294967297ull;
  ExpectInvalid(FusionSpec::FromJson(j).status(), {"threads"});
  j["threads"] = -4294967295ll;
  ExpectInvalid(FusionSpec::FromJson(j).status(), {"threads"});
}

// --- Point 11: FIFOs among the inputs ---------------------------------------

class FifoInputTest : public HostileInputTest {
 protected:
  // Runs the job expecting the refusal of `fifo`.
  void ExpectFifoRefused(const FusionSpec& spec, const std::string& fifo) {
    absl::Status s = RunWithFifoGuard(fifo, [&] { return Run(spec).status(); });
    ExpectInvalid(s, {fifo, "is not a regular file (FIFO)"});
  }
};

TEST_F(FifoInputTest, FineTunedFile) {
  const std::string fifo = tmp_.Join("ft.safetensors");
  MakeFifoOrDie(fifo);
  FusionSpec spec = Spec("fifo-ft");
  spec.tasks[0].finetuned_uri = fifo;
  ExpectFifoRefused(spec, fifo);
}

TEST_F(FifoInputTest, IndexShard) {
  const std::string dir = Dir("sharded");
  WriteShardedCheckpoint(dir, {{ToRaw(kQ, pre_[kQ]), ToRaw(kUp, pre_[kUp])},
                               {ToRaw(kNorm, pre_[kNorm])}});
  auto names = ListDirectory(dir);
  ASSERT_TRUE(names.ok());
  std::string shard;
  for (const std::string& n : *names) {
    if (absl::StartsWith(n, "model-00002")) shard = JoinPath(dir, n);
  }
  ASSERT_FALSE(shard.empty());
  ASSERT_EQ(::unlink(shard.c_str()), 0);
  MakeFifoOrDie(shard);
  FusionSpec spec = Spec("fifo-shard");
  spec.pretrained_uri = dir;
  ExpectFifoRefused(spec, shard);
  // The index itself as a FIFO.
  const std::string index = JoinPath(dir, "model.safetensors.index.json");
  ASSERT_EQ(::unlink(index.c_str()), 0);
  MakeFifoOrDie(index);
  spec.pretrained_uri = index;
  ExpectFifoRefused(spec, index);
}

TEST_F(FifoInputTest, CalibrationFile) {
  const std::string fifo = tmp_.Join("h.safetensors");
  MakeFifoOrDie(fifo);
  FusionSpec spec = Spec("fifo-cal");
  spec.tasks[0].hessian_uri = fifo;
  ExpectFifoRefused(spec, fifo);
}

TEST_F(FifoInputTest, Patch) {
  const std::string fifo = tmp_.Join("p.safetensors");
  MakeFifoOrDie(fifo);
  FusionSpec spec = Spec("fifo-patch");
  spec.tasks[0].finetuned_uri.clear();
  spec.tasks[0].patch_uri = fifo;
  ExpectFifoRefused(spec, fifo);
  absl::Status s = RunWithFifoGuard(
      fifo, [&] { return Apply(base_, fifo, tmp_.Join("fifo-applied")); });
  ExpectInvalid(s, {fifo, "(FIFO)"});
}

TEST_F(FifoInputTest, AdapterConfigAndWeights) {
  const std::string dir = Dir("adapter");
  const std::string config = JoinPath(dir, "adapter_config.json");
  MakeFifoOrDie(config);
  FusionSpec spec = Spec("fifo-adapter");
  spec.tasks[0].finetuned_uri = dir;
  ExpectFifoRefused(spec, config);
  ASSERT_EQ(::unlink(config.c_str()), 0);
  WriteFileOrDie(config, R"({"peft_type": "LORA", "r": 2, "lora_alpha": 4})");
  const std::string weights = JoinPath(dir, "adapter_model.safetensors");
  MakeFifoOrDie(weights);
  ExpectFifoRefused(spec, weights);
}

TEST_F(FifoInputTest, PrepareRefusesAFifoNamedAsAnInput) {
  const std::string fifo = tmp_.Join("ft.safetensors");
  MakeFifoOrDie(fifo);
  auto runner = jobs::NewFusionJobRunner({tmp_.path()});
  ASSERT_TRUE(runner.ok()) << runner.status();
  FusionSpec spec = Spec("prepare");
  spec.tasks[0].finetuned_uri = fifo;
  absl::Status s = RunWithFifoGuard(
      fifo, [&] { return (*runner)->Prepare(spec.ToJson()).status(); });
  ExpectInvalid(s, {"tasks[0].finetuned", "(FIFO)"});
  spec = Spec("prepare");
  spec.tasks[0].hessian_uri = fifo;
  s = RunWithFifoGuard(
      fifo, [&] { return (*runner)->Prepare(spec.ToJson()).status(); });
  ExpectInvalid(s, {"tasks[0].hessians", "(FIFO)"});
  // A directory (a checkpoint) still passes.
  EXPECT_TRUE((*runner)->Prepare(Spec("prepare").ToJson()).ok());
}

// --- Point 19: bounded echoes ------------------------------------------------

TEST_F(HostileInputTest, ErrorsEchoUserValuesBounded) {
  FusionSpec spec = Spec("echo");
  spec.pretrained_uri = std::string(60000, 'u');
  absl::Status s = spec.Validate();
  ExpectInvalid(s, {"pretrained", "(60000 bytes)"});
  EXPECT_LT(s.message().size(), 600u);
  spec = Spec("echo");
  spec.include = {std::string(100000, 'f')};
  s = spec.Validate();
  ExpectInvalid(s, {"include[0]", "(100000 bytes)"});
  EXPECT_LT(s.message().size(), 600u);
  spec = Spec("echo");
  spec.tasks[0].label = std::string(5000, 'l');
  s = spec.Validate();
  ExpectInvalid(s, {"tasks[0].label"});
  EXPECT_LT(s.message().size(), 600u);
  // Invalid UTF-8 (from a job file) is refused naming the field, before
  // it could reach a JSON report.
  spec = Spec("echo");
  spec.tasks[0].finetuned_uri = ft_ + "\xff\xfe";
  ExpectInvalid(spec.Validate(), {"tasks[0].finetuned", "not valid UTF-8"});
  spec = Spec("echo");
  spec.include = {"a\xc3("};
  ExpectInvalid(spec.Validate(), {"include[0]", "not valid UTF-8"});
  nlohmann::json j = Spec("echo").ToJson();
  j[std::string(100000, 'k')] = 1;
  s = FusionSpec::FromJson(j).status();
  ExpectInvalid(s, {"unknown key"});
  EXPECT_LT(s.message().size(), 600u);
}

// --- Point 21 ----------------------------------------------------------------

TEST_F(HostileInputTest, CalibrationMatchingNoTensorWarns) {
  const std::string cal = tmp_.Join("other.hessians.safetensors");
  at::Tensor x = at::randn({50, 8});
  WriteFileOrDie(cal,
                 SerializeSafetensors(
                     {ToRaw("other.model.q_proj.hessian",
                            (2.0 / 50 * x.t().matmul(x)).contiguous())},
                     {{"format", "tailor-hessian/1"}, {"nsamples", "50"}}));
  FusionSpec spec = Spec("cal");
  spec.tasks[0].hessian_uri = cal;
  auto report = Run(spec);
  ASSERT_TRUE(report.ok()) << report.status();
  bool warned = false;
  for (const auto& w : (*report)["warnings"]) {
    warned |= absl::StrContains(w.get<std::string>(), cal) &&
              absl::StrContains(w.get<std::string>(), "none of the fused");
  }
  EXPECT_TRUE(warned) << (*report)["warnings"].dump();

  // A calibration file that covers a fused tensor: no such warning.
  const std::string good = tmp_.Join("good.hessians.safetensors");
  WriteFileOrDie(good,
                 SerializeSafetensors(
                     {ToRaw("model.layers.0.self_attn.q_proj.hessian",
                            (2.0 / 50 * x.t().matmul(x)).contiguous())},
                     {{"format", "tailor-hessian/1"}, {"nsamples", "50"}}));
  spec = Spec("cal-good");
  spec.tasks[0].hessian_uri = good;
  report = Run(spec);
  ASSERT_TRUE(report.ok()) << report.status();
  for (const auto& w : (*report)["warnings"]) {
    EXPECT_FALSE(absl::StrContains(w.get<std::string>(), "none of the fused"))
        << w;
  }
}

TEST_F(HostileInputTest, NanInPatchValuesIsRefused) {
  FusionSpec spec = Spec("nan");
  spec.patch_uri = tmp_.Join("nan.patch.safetensors");
  ASSERT_TRUE(Run(spec).ok());
  // Overwrite the first stored value of q_proj with a NaN.
  const std::string values = absl::StrCat(kQ, ".values");
  uint64_t offset = 0;
  {
    auto file = SafetensorsFile::Open(spec.patch_uri);
    ASSERT_TRUE(file.ok()) << file.status();
    const TensorEntry* e = (*file)->header().Find(values);
    ASSERT_NE(e, nullptr);
    ASSERT_GT(e->nbytes(), 0u);
    offset = (*file)->header().data_offset() + e->begin;
  }
  std::string bytes = ReadFileOrDie(spec.patch_uri);
  const float nan = std::nanf("");
  std::memcpy(bytes.data() + offset, &nan, sizeof nan);
  WriteFileOrDie(spec.patch_uri, bytes);

  absl::Status s = Apply(base_, spec.patch_uri, tmp_.Join("nan-applied"));
  ExpectInvalid(s, {spec.patch_uri, kQ, "NaN"});
  EXPECT_FALSE(PathExists(tmp_.Join("nan-applied")));
  FusionSpec stitch = Spec("nan-stitch");
  stitch.tasks[0].finetuned_uri.clear();
  stitch.tasks[0].patch_uri = spec.patch_uri;
  ExpectInvalid(Run(stitch).status(), {spec.patch_uri, kQ, "NaN"});
}

TEST_F(HostileInputTest, PatchIsRefusedOnAnotherBaseOfTheSameLayout) {
  FusionSpec spec = Spec("layout");
  spec.patch_uri = tmp_.Join("layout.patch.safetensors");
  ASSERT_TRUE(Run(spec).ok());
  // Same names, shapes and dtypes (so the same header), other values.
  auto other = pre_;
  for (auto& [n, w] : other) w = w * 1.5;
  const std::string base2 = WriteModel("base2", other);
  ASSERT_EQ(HeaderFingerprint(JoinPath(base2, "model.safetensors")).value(),
            HeaderFingerprint(JoinPath(base_, "model.safetensors")).value());
  absl::Status s = Apply(base2, spec.patch_uri, tmp_.Join("other-applied"));
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition) << s;
  EXPECT_TRUE(absl::StrContains(s.message(), "sampled tensor data")) << s;
  EXPECT_FALSE(PathExists(tmp_.Join("other-applied")));
  // The base it was made for is accepted.
  EXPECT_TRUE(Apply(base_, spec.patch_uri, tmp_.Join("applied")).ok());
}

TEST(DataFingerprintTest, SeesValuesNotJustTheHeader) {
  TempDir dir;
  const std::string path = dir.Join("a.safetensors");
  // Larger than the 64 x 4 KiB samples, so blocks are spread out.
  WriteFileOrDie(path, SerializeSafetensors(
                           {ToRaw("w", at::zeros({1 << 20}, at::kFloat))}));
  auto a = DataFingerprint(path);
  ASSERT_TRUE(a.ok()) << a.status();
  EXPECT_EQ(*DataFingerprint(path), *a);
  at::Tensor t = at::zeros({1 << 20}, at::kFloat);
  t[(1 << 20) - 1] = 1;  // the last value is always sampled
  WriteFileOrDie(path, SerializeSafetensors({ToRaw("w", t)}));
  auto b = DataFingerprint(path);
  ASSERT_TRUE(b.ok());
  EXPECT_NE(*a, *b);
  // A fine-tune changes values everywhere, so some sampled block changes.
  WriteFileOrDie(path, SerializeSafetensors({ToRaw(
                           "w", at::full({1 << 20}, 0.5f, at::kFloat))}));
  EXPECT_NE(*DataFingerprint(path), *a);
}

}  // namespace
}  // namespace tailor
