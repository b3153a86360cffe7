// End to end: generated multi-shard BF16 checkpoints with calibration files
// through RunFusionJob and ApplyPatch.

#include "fusion/fusion_job.h"

#include <ATen/ATen.h>
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmath>
#include <filesystem>
#include <functional>
#include <limits>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "fusion/apply_patch.h"
#include "fusion/patch.h"
#include "fusion/tailor_kernel.h"
#include "io/checkpoint.h"
#include "testing/test_util.h"
#include "util/file_util.h"
#include "util/sha256.h"

namespace tailor {
namespace {

using ::tailor::testing::ExpectSameFiles;
using ::tailor::testing::RawTensor;
using ::tailor::testing::ReadFileOrDie;
using ::tailor::testing::SerializeSafetensors;
using ::tailor::testing::TempDir;
using ::tailor::testing::ToRaw;
using ::tailor::testing::WriteFileOrDie;
using ::tailor::testing::WriteShardedCheckpoint;

constexpr int64_t kHidden = 24, kInter = 40, kVocab = 50;

// name -> shape of the linear weights (out x in).
std::vector<std::pair<std::string, std::vector<int64_t>>> Linears() {
  return {{"model.layers.0.self_attn.q_proj.weight", {kHidden, kHidden}},
          {"model.layers.0.self_attn.k_proj.weight", {kHidden, kHidden}},
          {"model.layers.0.self_attn.v_proj.weight", {kHidden, kHidden}},
          {"model.layers.0.mlp.up_proj.weight", {kInter, kHidden}},
          {"model.layers.0.mlp.down_proj.weight", {kHidden, kInter}}};
}

class FusionJobTest : public ::testing::Test {
 protected:
  void SetUp() override {
    at::manual_seed(42);
    base_ = Dir("base");
    std::map<std::string, at::Tensor> pre;
    for (const auto& [name, shape] : Linears()) pre[name] = at::randn(shape);
    pre["model.embed_tokens.weight"] = at::randn({kVocab, kHidden});
    pre["model.norm.weight"] = at::ones({kHidden}) + 0.1 * at::randn({kHidden});
    WriteCheckpoint(base_, pre, at::kBFloat16);
    WriteFileOrDie(JoinPath(base_, "config.json"),
                   "{\"model_type\": \"llama\"}");
    WriteFileOrDie(JoinPath(base_, "tokenizer.json"), "{}");
    for (int t = 0; t < 2; ++t) {
      std::map<std::string, at::Tensor> ft;
      for (auto& [name, w] : pre) ft[name] = w + 0.3 * at::randn(w.sizes());
      const std::string dir = Dir(absl::StrCat("ft", t));
      WriteCheckpoint(dir, ft, at::kBFloat16);
      ft_.push_back(dir);
      hessians_.push_back(
          WriteHessians(Dir(absl::StrCat("cal", t)) + "/h.safetensors"));
    }
  }

  std::string Dir(const std::string& name) {
    const std::string p = tmp_.Join(name);
    ::mkdir(p.c_str(), 0755);
    return p;
  }

  // Two shards plus an integer buffer, as real checkpoints have.
  void WriteCheckpoint(const std::string& dir,
                       const std::map<std::string, at::Tensor>& ts,
                       at::ScalarType type) {
    std::vector<RawTensor> a, b;
    for (const auto& [name, w] : ts) {
      (absl::StrContains(name, "mlp") ? b : a)
          .push_back(ToRaw(name, w.to(type)));
    }
    b.push_back(ToRaw("model.position_ids", at::arange(8, at::kLong)));
    WriteShardedCheckpoint(dir, {a, b});
  }

  std::string WriteHessians(const std::string& path) {
    auto gram = [](int64_t c) {
      at::Tensor x =
          at::randn({200, c}).matmul(at::eye(c) + 0.3 * at::randn({c, c}));
      return (2.0 / 200 * x.t().matmul(x)).contiguous();
    };
    std::vector<RawTensor> t = {
        ToRaw("model.layers.0.self_attn.q_proj.hessian", gram(kHidden)),
        ToRaw("model.layers.0.mlp.up_proj.hessian", gram(kHidden)),
        ToRaw("model.layers.0.mlp.down_proj.hessian", gram(kInter))};
    WriteFileOrDie(path,
                   SerializeSafetensors(
                       t, {{"format", "tailor-hessian/1"},
                           {"nsamples", "200"},
                           {"aliases",
                            "{\"model.layers.0.self_attn.k_proj.weight\": "
                            "\"model.layers.0.self_attn.q_proj.hessian\", "
                            "\"model.layers.0.self_attn.v_proj.weight\": "
                            "\"model.layers.0.self_attn.q_proj.hessian\", "
                            "\"model.layers.0.mlp.gate_proj.weight\": "
                            "\"model.layers.0.mlp.up_proj.hessian\"}"}}));
    return path;
  }

  FusionSpec Spec(const std::string& name, int tasks = 1) {
    FusionSpec spec;
    spec.pretrained_uri = base_;
    for (int t = 0; t < tasks; ++t) {
      TaskSpec task;
      task.label = absl::StrCat("t", t);
      task.finetuned_uri = ft_[t];
      task.hessian_uri = hessians_[t];
      spec.tasks.push_back(task);
    }
    spec.output_uri = tmp_.Join(name + "-out");
    spec.patch_uri = tmp_.Join(name + ".patch.safetensors");
    spec.report_uri = tmp_.Join(name + ".report.json");
    spec.device = "cpu";
    return spec;
  }

  absl::StatusOr<nlohmann::json> Run(
      const FusionSpec& spec, ProgressSink* sink = nullptr,
      const std::atomic<bool>* cancel = nullptr) {
    auto resolver = UriResolver::Create({tmp_.path()});
    if (!resolver.ok()) return resolver.status();
    RunOptions options;
    options.progress = sink;
    options.cancel = cancel;
    return RunFusionJob(spec, *resolver, options);
  }

  TempDir tmp_;
  std::string base_;
  std::vector<std::string> ft_, hessians_;
};

TEST_F(FusionJobTest, TailorFusesWithTheBaseLayoutAndExactKeptFraction) {
  FusionSpec spec = Spec("tailor");
  auto report = Run(spec);
  ASSERT_TRUE(report.ok()) << report.status();
  auto base = Checkpoint::Open(base_);
  auto out = Checkpoint::Open(spec.output_uri);
  ASSERT_TRUE(base.ok() && out.ok()) << out.status();
  ASSERT_EQ((*out)->tensors().size(), (*base)->tensors().size());
  EXPECT_TRUE((*out)->sharded());
  EXPECT_TRUE(IsRegularFile(JoinPath(spec.output_uri, "config.json")));
  EXPECT_TRUE(IsRegularFile(JoinPath(spec.output_uri, "tokenizer.json")));
  int64_t expected_kept = 0, differing = 0, entries = 0;
  for (const TensorInfo& t : (*base)->tensors()) {
    const TensorInfo* o = (*out)->Find(t.name);
    ASSERT_NE(o, nullptr) << t.name;
    EXPECT_EQ(o->dtype, t.dtype);
    EXPECT_EQ(o->shape, t.shape);
    EXPECT_EQ(o->file, t.file);
    if (t.dtype == DType::kI64) {
      EXPECT_EQ(*(*out)->ReadRaw(t.name), *(*base)->ReadRaw(t.name));
      continue;
    }
    expected_kept += KeepCount(0.1, t.numel);
    entries += t.numel;
    ReadOptions keep;
    keep.floating_dtype = std::nullopt;
    at::Tensor a = *(*base)->Read(t.name, keep);
    at::Tensor b = *(*out)->Read(t.name, keep);
    differing +=
        a.view(at::kShort).ne(b.view(at::kShort)).sum().item<int64_t>();
  }
  const nlohmann::json& totals = (*report)["totals"];
  EXPECT_EQ(totals["kept"].get<int64_t>(), expected_kept);
  EXPECT_EQ(totals["entries"].get<int64_t>(), entries);
  EXPECT_EQ(totals["tensors_fused"].get<int64_t>(), 7);
  EXPECT_EQ(totals["tensors_copied"].get<int64_t>(), 1);
  // Exactly the kept entries changed: fine-tuning moved every entry by far
  // more than a BF16 step, so each kept delta shows.
  EXPECT_EQ(differing, expected_kept);
  // Compensation lowered the summed layer error.
  EXPECT_LT(totals["error_compensated"].get<double>(),
            totals["error_mask_only"].get<double>());
  // Hessians were found for all five linears (q/k/v via aliases).
  int with_h = 0;
  for (const auto& t : (*report)["tensors"]) {
    if (t["action"] == "fused" && t["tasks"][0].value("hessian", false))
      ++with_h;
  }
  EXPECT_EQ(with_h, 5);
  // The report file holds the same report.
  EXPECT_EQ(
      nlohmann::json::parse(ReadFileOrDie(spec.report_uri))["totals"]["kept"],
      totals["kept"]);
}

TEST_F(FusionJobTest, ApplyPatchReproducesTheFusedCheckpointBitForBit) {
  for (const char* method : {"tailor", "magnitude", "ties", "dare"}) {
    FusionSpec spec = Spec(method);
    spec.method = *ParseMethod(method);
    if (spec.method != Method::kTailor) spec.tasks[0].hessian_uri.clear();
    auto report = Run(spec);
    ASSERT_TRUE(report.ok()) << method << ": " << report.status();
    auto resolver = UriResolver::Create({tmp_.path()});
    const std::string rebuilt = tmp_.Join(absl::StrCat(method, "-rebuilt"));
    absl::Status s =
        ApplyPatch(base_, spec.patch_uri, rebuilt, false, *resolver);
    ASSERT_TRUE(s.ok()) << s;
    ExpectSameFiles(spec.output_uri, rebuilt);
  }
}

// Issue #19 point 5: variant authors-code end to end: its count rule on
// the calibrated tensors, the variant in the report and the patch's knobs
// (and so in the journal identity, which hashes the same spec JSON), and a
// patch that rebuilds the checkpoint.
TEST_F(FusionJobTest, AuthorsCodeVariantRunsAndIsRecorded) {
  FusionSpec spec = Spec("authors");
  spec.tailor.variant = Variant::kAuthorsCode;
  ApplyVariantDefaults([](absl::string_view) { return false; }, &spec.tailor);
  auto report = Run(spec);
  ASSERT_TRUE(report.ok()) << report.status();
  EXPECT_EQ((*report)["spec"]["variant"], "authors-code");
  EXPECT_EQ((*report)["spec"]["omega"], 0.8);
  int calibrated = 0;
  for (const auto& t : (*report)["tensors"]) {
    if (t["action"] != "fused" || !t["tasks"][0].value("hessian", false)) {
      continue;
    }
    ++calibrated;
    const nlohmann::json& task = t["tasks"][0];
    EXPECT_EQ(task["compensation"], "authors-code") << t.dump();
    // One block (at most 40 columns < 128): int(n 0.9) + 1 reverted.
    int64_t n = 1;
    for (const auto& d : t["shape"]) n *= d.get<int64_t>();
    EXPECT_EQ(task["kept"].get<int64_t>(),
              n - (static_cast<int64_t>(n * 0.9) + 1))
        << t.dump();
  }
  EXPECT_EQ(calibrated, 5);
  Checkpoint::Options open;
  auto patch = PatchFile::Open(spec.patch_uri, open);
  ASSERT_TRUE(patch.ok()) << patch.status();
  EXPECT_EQ((*patch)->knobs()["variant"], "authors-code");
  auto resolver = UriResolver::Create({tmp_.path()});
  const std::string rebuilt = tmp_.Join("authors-rebuilt");
  absl::Status s = ApplyPatch(base_, spec.patch_uri, rebuilt, false, *resolver);
  ASSERT_TRUE(s.ok()) << s;
  ExpectSameFiles(spec.output_uri, rebuilt);
  // The same job with the paper's variant keeps round(rho n) instead.
  FusionSpec paper = Spec("paper");
  auto paper_report = Run(paper);
  ASSERT_TRUE(paper_report.ok()) << paper_report.status();
  EXPECT_FALSE((*paper_report)["spec"].contains("variant"));
  EXPECT_NE((*paper_report)["totals"]["kept"], (*report)["totals"]["kept"]);
}

TEST_F(FusionJobTest, EveryMethodProducesACheckpointAndIsDeterministic) {
  for (const char* method :
       {"tailor", "magnitude", "task_arithmetic", "ties", "dare", "spider"}) {
    for (int run = 0; run < 2; ++run) {
      FusionSpec spec = Spec(absl::StrCat(method, run));
      spec.method = *ParseMethod(method);
      if (spec.method != Method::kTailor) spec.tasks[0].hessian_uri.clear();
      spec.seed = 7;
      spec.threads = run == 0 ? 1 : 2;
      auto report = Run(spec);
      ASSERT_TRUE(report.ok()) << method << ": " << report.status();
      EXPECT_EQ((*report)["method"], method);
      if (run == 1) {
        ExpectSameFiles(tmp_.Join(absl::StrCat(method, 0, "-out")),
                        spec.output_uri);
        EXPECT_EQ(ReadFileOrDie(
                      tmp_.Join(absl::StrCat(method, 0, ".patch.safetensors"))),
                  ReadFileOrDie(spec.patch_uri));
      }
    }
  }
}

TEST_F(FusionJobTest, StitchesTasksAndRestitchesFromTheirPatches) {
  FusionSpec spec = Spec("multi", 2);
  spec.tasks[0].keep_ratio = 0.05;
  spec.tasks[1].keep_ratio = 0.05;
  auto report = Run(spec);
  ASSERT_TRUE(report.ok()) << report.status();
  const std::string p0 = tmp_.Join("multi.patch.t0.safetensors");
  const std::string p1 = tmp_.Join("multi.patch.t1.safetensors");
  ASSERT_TRUE(IsRegularFile(p0) && IsRegularFile(p1));
  // Stitched mask = union of the task masks.
  Checkpoint::Options open;
  auto stitched = PatchFile::Open(spec.patch_uri, open);
  auto a = PatchFile::Open(p0, open);
  auto b = PatchFile::Open(p1, open);
  ASSERT_TRUE(stitched.ok() && a.ok() && b.ok());
  const std::string name = "model.layers.0.mlp.up_proj.weight";
  TaskDelta sa = *(*a)->Load(name), sb = *(*b)->Load(name),
            ss = *(*stitched)->Load(name);
  EXPECT_TRUE(ss.mask.equal(sa.mask | sb.mask));
  EXPECT_EQ(sa.mask.sum().item<int64_t>(), KeepCount(0.05, kInter * kHidden));

  // A later job stitches the two saved patches without the fine-tuned models.
  FusionSpec again;
  again.pretrained_uri = base_;
  again.tasks = {TaskSpec{"t0", "", p0, "", {}, {}},
                 TaskSpec{"t1", "", p1, "", {}, {}}};
  again.output_uri = tmp_.Join("restitched");
  again.device = "cpu";
  auto report2 = Run(again);
  ASSERT_TRUE(report2.ok()) << report2.status();
  ExpectSameFiles(spec.output_uri, again.output_uri);
}

TEST_F(FusionJobTest, LoraAdapterIsAFineTunedCheckpoint) {
  const std::string lora = Dir("lora");
  WriteFileOrDie(lora + "/adapter_config.json",
                 R"({"peft_type": "LORA", "r": 4, "lora_alpha": 8,
                     "target_modules": ["up_proj"]})");
  WriteFileOrDie(
      lora + "/adapter_model.safetensors",
      SerializeSafetensors(
          {ToRaw("base_model.model.model.layers.0.mlp.up_proj.lora_A.weight",
                 at::randn({4, kHidden})),
           ToRaw("base_model.model.model.layers.0.mlp.up_proj.lora_B.weight",
                 at::randn({kInter, 4}))}));
  FusionSpec spec = Spec("lora");
  spec.tasks[0].finetuned_uri = lora;
  spec.include = {"mlp"};
  auto report = Run(spec);
  ASSERT_TRUE(report.ok()) << report.status();
  int fused = 0;
  for (const auto& t : (*report)["tensors"]) {
    if (t["action"] == "fused") {
      ++fused;
      // Only up_proj differs from the base.
      if (t["name"] != "model.layers.0.mlp.up_proj.weight") {
        EXPECT_EQ(t["kept"], KeepCount(0.1, t["count"].get<int64_t>()));
      }
    }
  }
  EXPECT_EQ(fused, 2);  // up_proj, down_proj
}

TEST_F(FusionJobTest, MismatchesAreErrorsOrCopiesWithWarnings) {
  // A fine-tuned checkpoint missing one tensor and with another reshaped.
  const std::string bad = Dir("bad");
  std::vector<RawTensor> tensors;
  auto base = Checkpoint::Open(base_);
  ReadOptions keep;
  keep.floating_dtype = std::nullopt;
  for (const TensorInfo& t : (*base)->tensors()) {
    if (t.name == "model.norm.weight") continue;
    at::Tensor w = *(*base)->Read(t.name, keep);
    if (t.name == "model.embed_tokens.weight") w = w.reshape({kHidden, kVocab});
    tensors.push_back(ToRaw(t.name, w));
  }
  WriteShardedCheckpoint(bad, {tensors});
  FusionSpec spec = Spec("mismatch");
  spec.tasks[0].finetuned_uri = bad;
  auto failed = Run(spec);
  EXPECT_EQ(failed.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(absl::StrContains(failed.status().message(),
                                "model.embed_tokens.weight") ||
              absl::StrContains(failed.status().message(), "model.norm.weight"))
      << failed.status();
  EXPECT_FALSE(PathExists(spec.output_uri));
  spec.on_mismatch = MismatchPolicy::kCopyBase;
  auto copied = Run(spec);
  ASSERT_TRUE(copied.ok()) << copied.status();
  EXPECT_EQ((*copied)["warnings"].size(), 2u);
  EXPECT_EQ((*copied)["totals"]["tensors_copied"], 3);
}

TEST_F(FusionJobTest, BadSpecsAndInputsAreClearErrors) {
  FusionSpec spec = Spec("bad");
  spec.tailor.keep_ratio = 1.5;
  EXPECT_TRUE(absl::StrContains(Run(spec).status().message(), "keep ratio"));
  spec = Spec("bad");
  spec.tasks.clear();
  EXPECT_EQ(Run(spec).status().code(), absl::StatusCode::kInvalidArgument);
  spec = Spec("bad");
  spec.tasks[0].hessian_uri = hessians_[0] + ".missing";
  EXPECT_EQ(Run(spec).status().code(), absl::StatusCode::kNotFound);
  spec = Spec("bad");
  spec.pretrained_uri = "/etc";
  EXPECT_EQ(Run(spec).status().code(), absl::StatusCode::kPermissionDenied);
  spec = Spec("bad");
  spec.include = {"("};
  EXPECT_TRUE(absl::StrContains(Run(spec).status().message(), "include[0]"));
  // An existing output is never clobbered without overwrite.
  spec = Spec("exists");
  ASSERT_TRUE(Run(spec).ok());
  EXPECT_EQ(Run(spec).status().code(), absl::StatusCode::kAlreadyExists);
  spec.overwrite = true;
  EXPECT_TRUE(Run(spec).ok());
}

class Recorder : public ProgressSink {
 public:
  void OnEvent(const ProgressEvent& e) override {
    events.push_back(e);
    if (cancel_after > 0 && e.kind == ProgressEvent::Kind::kTensorDone &&
        e.done >= cancel_after) {
      cancel.store(true);
    }
  }
  std::vector<ProgressEvent> events;
  int cancel_after = 0;
  std::atomic<bool> cancel{false};
};

TEST_F(FusionJobTest, ProgressEventsAreOrderedAndComplete) {
  Recorder rec;
  auto report = Run(Spec("progress"), &rec);
  ASSERT_TRUE(report.ok());
  ASSERT_GE(rec.events.size(), 10u);
  EXPECT_EQ(rec.events.front().kind, ProgressEvent::Kind::kPlanned);
  EXPECT_EQ(rec.events.front().total, 8);
  EXPECT_EQ(rec.events.back().kind, ProgressEvent::Kind::kFinished);
  int done = 0;
  for (const ProgressEvent& e : rec.events) {
    if (e.kind == ProgressEvent::Kind::kTensorDone) {
      EXPECT_EQ(e.done, ++done);
    }
  }
  EXPECT_EQ(done, 8);
  EXPECT_EQ(rec.events.back().bytes_done, rec.events.back().bytes_total);
}

TEST_F(FusionJobTest, CancellationPublishesNothing) {
  Recorder rec;
  rec.cancel_after = 3;
  FusionSpec spec = Spec("cancel", 2);
  auto report = Run(spec, &rec, &rec.cancel);
  EXPECT_EQ(report.status().code(), absl::StatusCode::kCancelled);
  EXPECT_FALSE(PathExists(spec.output_uri));
  EXPECT_FALSE(PathExists(spec.patch_uri));
  EXPECT_FALSE(PathExists(spec.report_uri));
  // No staging directories or spool files left behind.
  auto names = ListDirectory(tmp_.path());
  ASSERT_TRUE(names.ok());
  for (const std::string& n : *names)
    EXPECT_FALSE(absl::StartsWith(n, ".")) << n;
}

// Runs `action` once, when the job has planned (its outputs are open) and
// before any tensor is computed.
class OnPlanned : public ProgressSink {
 public:
  explicit OnPlanned(std::function<void()> action)
      : action_(std::move(action)) {}
  void OnEvent(const ProgressEvent& event) override {
    if (event.kind == ProgressEvent::Kind::kPlanned) action_();
  }

 private:
  std::function<void()> action_;
};

// Issue #10 point 1: an allowed root as the output, even with overwrite, is
// refused before anything is written; the root keeps its contents.
TEST_F(FusionJobTest, OutputThatIsAnAllowedRootIsRefused) {
  FusionSpec spec = Spec("root");
  spec.output_uri = tmp_.path();
  spec.overwrite = true;
  auto report = Run(spec);
  EXPECT_EQ(report.status().code(), absl::StatusCode::kPermissionDenied)
      << report.status();
  EXPECT_TRUE(absl::StrContains(report.status().message(), "out:"))
      << report.status();
  EXPECT_TRUE(absl::StrContains(report.status().message(), "allowed root"));
  EXPECT_TRUE(IsDirectory(base_));
  EXPECT_FALSE(PathExists(spec.patch_uri));
  // Nothing staged in the root's parent either.
  auto names = ListDirectory(Dirname(tmp_.path()));
  ASSERT_TRUE(names.ok());
  for (const std::string& n : *names) {
    EXPECT_FALSE(absl::StrContains(n, Basename(tmp_.path()) + ".tailor-")) << n;
  }
  // A protected path (tailord's data directory) is refused the same way.
  const std::string data = Dir("tailord-data");
  WriteFileOrDie(JoinPath(data, "jobs.db"), "store");
  auto resolver = UriResolver::Create({tmp_.path()}, {data});
  ASSERT_TRUE(resolver.ok());
  for (const std::string& out : {data, JoinPath(data, "jobs.db")}) {
    FusionSpec s = Spec("data");
    s.output_uri.clear();
    s.report_uri.clear();
    s.patch_uri = out;
    s.overwrite = true;
    auto r = RunFusionJob(s, *resolver, {});
    EXPECT_EQ(r.status().code(), absl::StatusCode::kPermissionDenied)
        << r.status();
    EXPECT_TRUE(absl::StrContains(r.status().message(), "data directory"));
  }
  EXPECT_EQ(ReadFileOrDie(JoinPath(data, "jobs.db")), "store");
}

// Issue #10 point 2: an output equal to (or containing) one of the job's
// inputs is refused; the inputs stay as they were.
TEST_F(FusionJobTest, OutputOverlappingAnInputIsRefused) {
  const std::string hessian_before = ReadFileOrDie(hessians_[0]);
  struct Case {
    std::string field;
    std::function<void(FusionSpec&)> edit;
  };
  std::vector<Case> cases = {
      {"out", [&](FusionSpec& s) { s.output_uri = base_; }},
      {"out", [&](FusionSpec& s) { s.output_uri = ft_[0]; }},
      {"out", [&](FusionSpec& s) { s.output_uri = JoinPath(base_, "x"); }},
      {"patch_out", [&](FusionSpec& s) { s.patch_uri = hessians_[0]; }},
      {"report", [&](FusionSpec& s) { s.report_uri = hessians_[0]; }},
      {"patch_out",
       [&](FusionSpec& s) {
         s.patch_uri = JoinPath(base_, "model-00001-of-00002.safetensors");
       }},
  };
  for (const Case& c : cases) {
    FusionSpec spec = Spec("overlap");
    spec.overwrite = true;
    c.edit(spec);
    auto report = Run(spec);
    EXPECT_EQ(report.status().code(), absl::StatusCode::kInvalidArgument)
        << report.status();
    EXPECT_TRUE(absl::StartsWith(report.status().message(), c.field + ":"))
        << report.status();
    EXPECT_TRUE(absl::StrContains(report.status().message(), "input"))
        << report.status();
  }
  EXPECT_EQ(ReadFileOrDie(hessians_[0]), hessian_before);
  EXPECT_TRUE(Checkpoint::Open(base_).ok());
  EXPECT_TRUE(Checkpoint::Open(ft_[0]).ok());
}

// Issue #10 point 3: outputs overlapping each other or of the wrong kind are
// refused up front, and nothing is published.
TEST_F(FusionJobTest, OverlappingOrMistypedOutputsAreRefused) {
  const std::string dir = Dir("a-directory");
  struct Case {
    std::string field;
    std::function<void(FusionSpec&)> edit;
  };
  std::vector<Case> cases = {
      {"patch_out", [&](FusionSpec& s) { s.patch_uri = s.output_uri; }},
      {"report", [&](FusionSpec& s) { s.report_uri = s.patch_uri; }},
      {"report", [&](FusionSpec& s) { s.report_uri = dir; }},
      {"patch_out", [&](FusionSpec& s) { s.patch_uri = dir; }},
      {"report",
       [&](FusionSpec& s) { s.report_uri = JoinPath(s.output_uri, "r.json"); }},
      // The per-task patch of t1 is where the report goes.
      {"report",
       [&](FusionSpec& s) {
         s.report_uri = tmp_.Join("mixed.t1.safetensors");
       }},
  };
  for (const Case& c : cases) {
    FusionSpec spec = Spec("mixed", 2);
    spec.patch_uri = tmp_.Join("mixed.safetensors");
    spec.overwrite = true;
    c.edit(spec);
    auto report = Run(spec);
    EXPECT_EQ(report.status().code(), absl::StatusCode::kInvalidArgument)
        << report.status();
    EXPECT_TRUE(absl::StartsWith(report.status().message(), c.field))
        << report.status();
    EXPECT_FALSE(PathExists(spec.output_uri));
    EXPECT_FALSE(IsRegularFile(spec.patch_uri));
  }
  EXPECT_TRUE(ListDirectory(dir)->empty());
}

// Issue #10 point 3: all or nothing -- when the last output cannot be
// published (its name was taken while the job ran), neither the patches nor
// the checkpoint appear.
TEST_F(FusionJobTest, OutputsArePublishedAsOneUnit) {
  FusionSpec spec = Spec("unit", 2);
  OnPlanned squat([&] { WriteFileOrDie(spec.report_uri, "squatter"); });
  auto report = Run(spec, &squat);
  EXPECT_EQ(report.status().code(), absl::StatusCode::kAlreadyExists)
      << report.status();
  EXPECT_FALSE(PathExists(spec.output_uri));
  EXPECT_FALSE(PathExists(spec.patch_uri));
  EXPECT_EQ(ReadFileOrDie(spec.report_uri), "squatter");
  auto names = ListDirectory(tmp_.path());
  ASSERT_TRUE(names.ok());
  for (const std::string& n : *names) {
    EXPECT_FALSE(absl::StartsWith(n, ".")) << n;
    EXPECT_FALSE(absl::StrContains(n, "unit.patch")) << n;
  }
  // With overwrite, the replaced outputs are all new, and the report pins
  // the patch's bytes (issue #10 point 4).
  spec.overwrite = true;
  report = Run(spec);
  ASSERT_TRUE(report.ok()) << report.status();
  const std::string patch = ReadFileOrDie(spec.patch_uri);
  EXPECT_EQ((*report)["outputs"]["patch_sha256"], Sha256Hex(patch));
  EXPECT_EQ((*report)["outputs"]["patch_bytes"].get<uint64_t>(), patch.size());
  EXPECT_NE(ReadFileOrDie(spec.report_uri), "squatter");
}

// Issue #10 point 5: the outputs' parent directory swapped for a symlink to
// a directory outside the roots while the job runs: nothing lands outside,
// the job fails.
TEST_F(FusionJobTest, ParentSwappedForSymlinkWhileRunningIsRefused) {
  TempDir outside;
  const std::string sub = Dir("sub");
  FusionSpec spec = Spec("swap");
  spec.output_uri = JoinPath(sub, "out");
  spec.patch_uri = JoinPath(sub, "p.safetensors");
  spec.report_uri = JoinPath(sub, "r.json");
  OnPlanned swap([&] {
    ASSERT_EQ(::rename(sub.c_str(), tmp_.Join("sub-moved").c_str()), 0);
    ASSERT_EQ(::symlink(outside.path().c_str(), sub.c_str()), 0);
  });
  auto report = Run(spec, &swap);
  EXPECT_EQ(report.status().code(), absl::StatusCode::kFailedPrecondition)
      << report.status();
  EXPECT_TRUE(absl::StrContains(report.status().message(), "replaced"))
      << report.status();
  EXPECT_TRUE(ListDirectory(outside.path())->empty());
  EXPECT_TRUE(ListDirectory(tmp_.Join("sub-moved"))->empty());
}

// Issue #10 point 17: staging left by a killed writer beside this job's
// outputs is removed when the job runs; other hidden files stay.
TEST_F(FusionJobTest, StaleStagingOfTheOutputsIsRemoved) {
  FusionSpec spec = Spec("stale");
  const std::string stale_dir = tmp_.Join(".stale-out.partial-1-0");
  const std::string stale_spool =
      tmp_.Join(".stale.patch.safetensors.tailor-spool-1-3");
  const std::string unrelated = tmp_.Join(".stale-out.keep");
  ASSERT_EQ(::mkdir(stale_dir.c_str(), 0755), 0);
  WriteFileOrDie(JoinPath(stale_dir, "model.safetensors"), "partial");
  WriteFileOrDie(stale_spool, "spool");
  WriteFileOrDie(unrelated, "mine");
  auto report = Run(spec);
  ASSERT_TRUE(report.ok()) << report.status();
  EXPECT_FALSE(PathExists(stale_dir));
  EXPECT_FALSE(PathExists(stale_spool));
  EXPECT_TRUE(PathExists(unrelated));
}

// Task arithmetic and DARE stream each tensor in chunks (FusionJob's
// StreamOne) when the fused checkpoint is the only output; with a patch
// output they are computed whole. Both must give the same bytes and the same
// per-tensor report, for any chunk size, task count and compute precision.
TEST_F(FusionJobTest, StreamedDataFreeMergesMatchWholeTensorBytes) {
  // An F32 copy of the inputs as well: there the stored type is the
  // compute type (read straight into the compute buffer).
  std::vector<std::string> f32 = {Dir("base32"), Dir("ft32a"), Dir("ft32b")};
  const std::vector<std::string> src = {base_, ft_[0], ft_[1]};
  for (size_t i = 0; i < src.size(); ++i) {
    auto ckpt = Checkpoint::Open(src[i]);
    ASSERT_TRUE(ckpt.ok()) << ckpt.status();
    std::map<std::string, at::Tensor> ts;
    for (const TensorInfo& info : (*ckpt)->tensors()) {
      if (info.dtype != DType::kBF16) continue;
      auto t = (*ckpt)->Read(info.name);
      ASSERT_TRUE(t.ok()) << t.status();
      ts[info.name] = *t;
    }
    WriteCheckpoint(f32[i], ts, at::kFloat);
  }
  int run = 0;
  for (bool use_f32 : {false, true}) {
    for (const char* method : {"task_arithmetic", "dare"}) {
      for (int tasks : {1, 2}) {
        for (bool float64 : {false, true}) {
          for (int64_t chunk : {int64_t{1} << 18, int64_t{37}}) {
            SCOPED_TRACE(absl::StrCat(method, " tasks=", tasks,
                                      " float64=", float64, " chunk=", chunk,
                                      " f32=", use_f32));
            const std::string name = absl::StrCat("stream", run++);
            FusionSpec whole = Spec(name + "w", tasks);
            whole.method = *ParseMethod(method);
            whole.lambda = 0.7;
            whole.drop = 0.4;
            whole.seed = 5;
            whole.tailor.float64 = float64;
            for (int t = 0; t < tasks; ++t) {
              whole.tasks[t].hessian_uri.clear();
              if (use_f32) whole.tasks[t].finetuned_uri = f32[1 + t];
            }
            if (use_f32) whole.pretrained_uri = f32[0];
            FusionSpec streamed = whole;
            streamed.output_uri = tmp_.Join(name + "s-out");
            streamed.patch_uri.clear();  // the checkpoint alone: streams
            streamed.report_uri.clear();
            auto resolver = UriResolver::Create({tmp_.path()});
            ASSERT_TRUE(resolver.ok());
            RunOptions options;
            options.stream_chunk_elements = chunk;
            auto a = RunFusionJob(whole, *resolver, options);
            ASSERT_TRUE(a.ok()) << a.status();
            auto b = RunFusionJob(streamed, *resolver, options);
            ASSERT_TRUE(b.ok()) << b.status();
            ExpectSameFiles(whole.output_uri, streamed.output_uri);
            nlohmann::json ta = (*a)["tensors"], tb = (*b)["tensors"];
            for (auto* t : {&ta, &tb}) {
              for (auto& e : *t) e.erase("seconds");
            }
            EXPECT_EQ(ta, tb);
            EXPECT_GT((*b)["totals"]["kept"].get<int64_t>(), 0);
          }
        }
      }
    }
  }
}

// The fused BF16 pass hands a chunk holding a non-finite value to the
// tensor ops: a NaN input is refused as before, and an overflow to Inf gives
// the tensor ops' bytes.
TEST_F(FusionJobTest, StreamedTaskArithmeticNonFiniteChunks) {
  at::Tensor pre = at::randn({16, 16});
  at::Tensor ft = pre + 0.1 * at::randn({16, 16});
  pre.view({-1})[100] = -3e38;  // ft - pre overflows to +Inf in float32
  ft.view({-1})[100] = 3e38;
  const std::string b = Dir("ov-base"), f = Dir("ov-ft"), bad = Dir("ov-nan");
  WriteCheckpoint(b, {{"w", pre}}, at::kBFloat16);
  WriteCheckpoint(f, {{"w", ft}}, at::kBFloat16);
  at::Tensor nan_ft = ft.clone();
  nan_ft.view({-1})[200] = std::numeric_limits<float>::quiet_NaN();
  WriteCheckpoint(bad, {{"w", nan_ft}}, at::kBFloat16);
  auto resolver = UriResolver::Create({tmp_.path()});
  ASSERT_TRUE(resolver.ok());
  RunOptions options;
  options.stream_chunk_elements = 37;
  FusionSpec spec;
  spec.pretrained_uri = b;
  spec.tasks.push_back(TaskSpec{"t", f, "", "", {}, {}});
  spec.method = Method::kTaskArithmetic;
  spec.output_uri = tmp_.Join("ov-out");
  spec.device = "cpu";
  auto report = RunFusionJob(spec, *resolver, options);
  ASSERT_TRUE(report.ok()) << report.status();
  auto out = Checkpoint::Open(spec.output_uri);
  ASSERT_TRUE(out.ok()) << out.status();
  auto raw = (*out)->ReadRaw("w");
  ASSERT_TRUE(raw.ok());
  const at::Tensor p = pre.to(at::kBFloat16).to(at::kFloat);
  const at::Tensor d = ft.to(at::kBFloat16).to(at::kFloat) - p;
  const at::Tensor want =
      at::where(d.ne(0), p + d, p).to(at::kBFloat16).contiguous();
  EXPECT_TRUE(std::isinf(want.view({-1})[100].item<float>()));
  EXPECT_EQ(*raw, std::string(static_cast<const char*>(want.data_ptr()),
                              want.numel() * 2));
  EXPECT_EQ((*report)["totals"]["kept"].get<int64_t>(),
            d.ne(0).sum().item<int64_t>());

  spec.tasks[0].finetuned_uri = bad;
  spec.output_uri = tmp_.Join("ov-nan-out");
  report = RunFusionJob(spec, *resolver, options);
  EXPECT_EQ(report.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(report.status().message(),
            "w: fine-tuned tensor contains NaN or Inf");
  EXPECT_FALSE(PathExists(spec.output_uri));
}

// Issue #17 point 3: a patch's bytes depend on its inputs' content and the
// knobs only. The same two-task job run on absolute paths, on relative
// paths (from another working directory) and on copies of its inputs in
// another directory writes the same stitched and per-task patches and the
// same fused checkpoint; each report names the paths it was given.
TEST_F(FusionJobTest, PatchBytesDependOnContentNotOnPaths) {
  namespace fs = std::filesystem;
  const std::string elsewhere = Dir("elsewhere");
  for (const char* d : {"base", "ft0", "ft1", "cal0", "cal1"}) {
    fs::copy(tmp_.Join(d), JoinPath(elsewhere, d), fs::copy_options::recursive);
  }
  FusionSpec absolute = Spec("abs", 2);
  FusionSpec copied = Spec("copy", 2);
  copied.pretrained_uri = JoinPath(elsewhere, "base");
  for (int t = 0; t < 2; ++t) {
    copied.tasks[t].finetuned_uri = JoinPath(elsewhere, absl::StrCat("ft", t));
    copied.tasks[t].hessian_uri =
        "file://" +
        JoinPath(elsewhere, absl::StrCat("cal", t, "/h.safetensors"));
  }
  FusionSpec relative = Spec("rel", 2);
  relative.pretrained_uri = "base";
  for (int t = 0; t < 2; ++t) {
    relative.tasks[t].finetuned_uri = absl::StrCat("./ft", t, "/");
    relative.tasks[t].hessian_uri = absl::StrCat("cal", t, "/h.safetensors");
  }
  relative.output_uri = "rel-out";
  relative.patch_uri = "rel.patch.safetensors";
  relative.report_uri = "rel.report.json";

  ASSERT_TRUE(Run(absolute).ok());
  ASSERT_TRUE(Run(copied).ok());
  char cwd[4096];
  ASSERT_NE(::getcwd(cwd, sizeof(cwd)), nullptr);
  ASSERT_EQ(::chdir(tmp_.path().c_str()), 0);
  auto rel_report = Run(relative);
  ASSERT_EQ(::chdir(cwd), 0);
  ASSERT_TRUE(rel_report.ok()) << rel_report.status();

  for (const char* suffix : {"", ".t0", ".t1"}) {
    const std::string a = ReadFileOrDie(
        tmp_.Join(absl::StrCat("abs.patch", suffix, ".safetensors")));
    EXPECT_EQ(a, ReadFileOrDie(tmp_.Join(
                     absl::StrCat("copy.patch", suffix, ".safetensors"))))
        << suffix;
    EXPECT_EQ(a, ReadFileOrDie(tmp_.Join(
                     absl::StrCat("rel.patch", suffix, ".safetensors"))))
        << suffix;
    // No path at all, in any form: not the directory, not an input's name.
    EXPECT_FALSE(absl::StrContains(a, tmp_.path())) << suffix;
    EXPECT_FALSE(absl::StrContains(a, "h.safetensors")) << suffix;
    EXPECT_FALSE(absl::StrContains(a, "\"uri\"")) << suffix;
  }
  ExpectSameFiles(absolute.output_uri, copied.output_uri);
  ExpectSameFiles(absolute.output_uri, tmp_.Join("rel-out"));

  // The patch still records the inputs by content, the report by URI too.
  auto patch = PatchFile::Open(absolute.patch_uri, Checkpoint::Options());
  ASSERT_TRUE(patch.ok()) << patch.status();
  ASSERT_EQ((*patch)->sources().size(), 5u);  // base, 2 x (ft, hessians)
  for (const nlohmann::json& s : (*patch)->sources()) {
    EXPECT_FALSE(s.contains("uri")) << s.dump();
    EXPECT_TRUE(s.contains("files") || s.contains("sha256")) << s.dump();
  }
  for (const auto& [spec, report] :
       {std::pair<FusionSpec, nlohmann::json>(
            copied, nlohmann::json::parse(ReadFileOrDie(copied.report_uri))),
        std::pair<FusionSpec, nlohmann::json>(relative, *rel_report)}) {
    const nlohmann::json& sources = report["sources"];
    ASSERT_EQ(sources.size(), 5u);
    EXPECT_EQ(sources[0]["role"], "pretrained");
    EXPECT_EQ(sources[0]["uri"], spec.pretrained_uri);
    EXPECT_EQ(sources[1]["uri"], spec.tasks[0].finetuned_uri);
    EXPECT_EQ(sources[2]["uri"], spec.tasks[0].hessian_uri);
    EXPECT_EQ(sources[3]["uri"], spec.tasks[1].finetuned_uri);
    EXPECT_EQ(sources[4]["uri"], spec.tasks[1].hessian_uri);
    // Without the URIs the report's sources are the patch's.
    nlohmann::json stripped = sources;
    for (auto& s : stripped) s.erase("uri");
    EXPECT_EQ(stripped, (*patch)->sources());
  }

  // A patch applies to the base's copy as well: content decides.
  auto resolver = UriResolver::Create({tmp_.path()});
  ASSERT_TRUE(resolver.ok());
  const std::string rebuilt = tmp_.Join("abs-rebuilt-from-copy");
  absl::Status s = ApplyPatch(JoinPath(elsewhere, "base"), absolute.patch_uri,
                              rebuilt, false, *resolver);
  ASSERT_TRUE(s.ok()) << s;
  ExpectSameFiles(absolute.output_uri, rebuilt);
}

// Patches written before issue #17 point 3 carry each source's URI: they
// are read and applied as before, the URI ignored except in a refusal.
TEST_F(FusionJobTest, PatchesWithSourceUrisStillApply) {
  FusionSpec spec = Spec("new");
  ASSERT_TRUE(Run(spec).ok());
  auto patch = PatchFile::Open(spec.patch_uri, Checkpoint::Options());
  ASSERT_TRUE(patch.ok()) << patch.status();
  PatchMetadata old;
  old.method = (*patch)->method();
  old.knobs = (*patch)->knobs();
  old.sources = (*patch)->sources();
  old.sources[0]["uri"] = "file:///somewhere/else/base";
  old.sources[1]["uri"] = "/somewhere/else/ft0";
  const std::string old_path = tmp_.Join("old.patch.safetensors");
  {
    auto writer = PatchWriter::Create(old_path);
    ASSERT_TRUE(writer.ok()) << writer.status();
    for (const PatchFile::TensorEntry& e : (*patch)->tensors()) {
      auto d = (*patch)->Load(e.name);
      ASSERT_TRUE(d.ok()) << d.status();
      ASSERT_TRUE((*writer)
                      ->Add(e.name, d->mask, d->delta, e.base_dtype,
                            (*patch)->tensor_metadata()[e.name]["stats"])
                      .ok());
    }
    ASSERT_TRUE((*writer)->Finish(old).ok());
  }
  auto reopened = PatchFile::Open(old_path, Checkpoint::Options());
  ASSERT_TRUE(reopened.ok()) << reopened.status();
  EXPECT_EQ((*reopened)->sources()[0]["uri"], "file:///somewhere/else/base");
  auto resolver = UriResolver::Create({tmp_.path()});
  ASSERT_TRUE(resolver.ok());
  absl::Status s =
      ApplyPatch(base_, old_path, tmp_.Join("old-rebuilt"), false, *resolver);
  ASSERT_TRUE(s.ok()) << s;
  ExpectSameFiles(spec.output_uri, tmp_.Join("old-rebuilt"));
  // Another base: refused, quoting where the patch says its base was.
  s = ApplyPatch(ft_[0], old_path, tmp_.Join("old-wrong"), false, *resolver);
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition) << s;
  EXPECT_TRUE(absl::StrContains(s.message(), "/somewhere/else/base")) << s;
  // A new patch on another base: refused without a URI to quote.
  s = ApplyPatch(ft_[0], spec.patch_uri, tmp_.Join("new-wrong"), false,
                 *resolver);
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition) << s;
  EXPECT_TRUE(absl::StrContains(s.message(), "different pre-trained")) << s;
  EXPECT_FALSE(absl::StrContains(s.message(), "(?)")) << s;
}

}  // namespace
}  // namespace tailor
