// Per-layer parameters in a fusion job (issue #19 point 3): a job whose
// lambda, density, t, keep or omega is a list over the layers gives every
// tensor exactly the bytes of a job run with that tensor's layer's value
// as a constant -- streamed (the fused checkpoint alone) and computed whole
// (with a patch output) -- and its report rows and patches say which value
// it got. The layer count comes from the base's config.json.

#include <ATen/ATen.h>
#include <gtest/gtest.h>
#include <sys/stat.h>

#include <functional>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "fusion/fusion_job.h"
#include "fusion/layer_gradient.h"
#include "fusion/patch.h"
#include "fusion/spec_gradients.h"
#include "io/checkpoint.h"
#include "testing/cancel_after.h"
#include "testing/test_util.h"
#include "util/file_util.h"

namespace tailor {
namespace {

using ::tailor::testing::CancelAfter;
using ::tailor::testing::RawTensor;
using ::tailor::testing::SerializeSafetensors;
using ::tailor::testing::TempDir;
using ::tailor::testing::ToRaw;
using ::tailor::testing::WriteFileOrDie;
using ::tailor::testing::WriteShardedCheckpoint;

constexpr int kTensorLayers = 4;  // layers with tensors
constexpr int kConfigLayers = 5;  // config.json's num_hidden_layers

std::string LayerName(int i, const char* rest) {
  return absl::StrCat("model.layers.", i, ".", rest);
}

class LayerParamsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    at::manual_seed(7);
    std::map<std::string, at::Tensor> pre;
    pre["model.embed_tokens.weight"] = at::randn({10, 8});
    for (int i = 0; i < kTensorLayers; ++i) {
      pre[LayerName(i, "mlp.up_proj.weight")] = at::randn({12, 8});
      pre[LayerName(i, "post_attention_layernorm.weight")] = at::randn({8});
    }
    pre["model.norm.weight"] = at::randn({8});
    pre["lm_head.weight"] = at::randn({10, 8});
    Write(tmp_.Join("base"), pre);
    // More layers in the config than tensors have: the config decides.
    WriteFileOrDie(
        tmp_.Join("base/config.json"),
        absl::StrCat("{\"num_hidden_layers\": ", kConfigLayers, "}"));
    for (int t = 0; t < 2; ++t) {
      std::map<std::string, at::Tensor> ft;
      for (const auto& [name, w] : pre) {
        ft[name] = w + 0.3 * at::randn(w.sizes());
      }
      Write(tmp_.Join(absl::StrCat("ft", t)), ft);
      std::vector<RawTensor> h;
      for (int i = 0; i < kTensorLayers; ++i) {
        at::Tensor x =
            at::randn({100, 8}).matmul(at::eye(8) + 0.3 * at::randn({8, 8}));
        h.push_back(ToRaw(LayerName(i, "mlp.up_proj.hessian"),
                          (2.0 / 100 * x.t().matmul(x)).contiguous()));
      }
      WriteFileOrDie(tmp_.Join(absl::StrCat("h", t, ".safetensors")),
                     SerializeSafetensors(h, {{"format", "tailor-hessian/1"},
                                              {"nsamples", "100"}}));
    }
    for (const auto& [name, w] : pre) names_.push_back(name);
  }

  // A new single-file checkpoint directory `dir`.
  static void Write(const std::string& dir,
                    const std::map<std::string, at::Tensor>& ts) {
    ASSERT_EQ(::mkdir(dir.c_str(), 0755), 0) << dir;
    std::vector<RawTensor> all;
    for (const auto& [name, w] : ts) all.push_back(ToRaw(name, w));
    WriteShardedCheckpoint(dir, {all});
  }

  FusionSpec Spec(Method method, int tasks) {
    FusionSpec spec;
    spec.method = method;
    spec.pretrained_uri = tmp_.Join("base");
    for (int t = 0; t < tasks; ++t) {
      TaskSpec task;
      task.label = absl::StrCat("t", t);
      task.finetuned_uri = tmp_.Join(absl::StrCat("ft", t));
      if (method == Method::kTailor) {
        task.hessian_uri = tmp_.Join(absl::StrCat("h", t, ".safetensors"));
      }
      spec.tasks.push_back(task);
    }
    spec.device = "cpu";
    spec.seed = 11;
    return spec;
  }

  // Runs `spec` into fresh outputs named `name` (with a patch: every tensor
  // computed whole); returns the report.
  nlohmann::json Run(FusionSpec spec, const std::string& name, bool whole) {
    spec.output_uri = tmp_.Join(name + "-out");
    if (whole) spec.patch_uri = tmp_.Join(name + ".patch.safetensors");
    auto resolver = UriResolver::Create({tmp_.path()});
    EXPECT_TRUE(resolver.ok());
    absl::StatusOr<nlohmann::json> report =
        RunFusionJob(spec, *resolver, RunOptions());
    EXPECT_TRUE(report.ok()) << name << ": " << report.status();
    return report.ok() ? *report : nlohmann::json();
  }

  std::string Tensor(const std::string& run, const std::string& name) {
    auto ckpt = Checkpoint::Open(tmp_.Join(run + "-out"));
    EXPECT_TRUE(ckpt.ok()) << ckpt.status();
    if (!ckpt.ok()) return "";
    absl::StatusOr<std::string> raw = (*ckpt)->ReadRaw(name);
    EXPECT_TRUE(raw.ok()) << raw.status();
    return raw.ok() ? *raw : "";
  }

  // The value of `list` for tensor `name` (mergekit's rule, over the
  // config's layer count).
  static double At(const std::vector<double>& list, const std::string& name) {
    return EvaluateGradient(
        list, GradientPosition(LayerIndexOf(name), kConfigLayers));
  }

  // `graded` with `key`'s list (set by `set_list`) against one constant
  // run per distinct value (set by `set_scalar`): every tensor's bytes are
  // the constant run's for its layer's value, streamed and whole, and its
  // report row names the value.
  void ExpectPerLayerConstants(
      FusionSpec graded, const std::string& key,
      const std::vector<double>& list,
      const std::function<void(FusionSpec&, double)>& set_scalar) {
    GradientOf(graded.gradients, key) = list;
    const std::string tag = absl::StrCat(MethodName(graded.method), "-", key);
    const nlohmann::json streamed = Run(graded, tag + "-s", false);
    const nlohmann::json whole = Run(graded, tag + "-w", true);
    std::map<double, std::string> constant_runs;
    for (const std::string& name : names_) {
      const double v = At(list, name);
      if (constant_runs.count(v)) continue;
      FusionSpec constant = graded;
      constant.gradients = LayerGradients{};
      set_scalar(constant, v);
      const std::string run = absl::StrCat(tag, "-c", constant_runs.size());
      Run(constant, run, false);
      constant_runs[v] = run;
    }
    // Four distinct values: the tensors outside the layers (t = 0) and
    // layers 1..3 (layer 0 is also at t = 0).
    EXPECT_EQ(constant_runs.size(), 4u) << key;
    // The parameter matters: layer 1 differs from the first value's run.
    const std::string probe = LayerName(1, "mlp.up_proj.weight");
    EXPECT_NE(Tensor(tag + "-s", probe),
              Tensor(constant_runs[list.front()], probe))
        << key;
    for (const std::string& name : names_) {
      const std::string& want = constant_runs[At(list, name)];
      EXPECT_EQ(Tensor(tag + "-s", name), Tensor(want, name)) << key << name;
      EXPECT_EQ(Tensor(tag + "-w", name), Tensor(want, name)) << key << name;
    }
    for (const nlohmann::json* report : {&streamed, &whole}) {
      for (const nlohmann::json& row : (*report)["tensors"]) {
        const std::string name = row["name"];
        ASSERT_TRUE(row.contains("parameters")) << row.dump();
        const std::optional<int64_t> layer = LayerIndexOf(name);
        EXPECT_EQ(row["layer"],
                  layer ? nlohmann::json(*layer) : nlohmann::json())
            << name;
        if (key == "keep" || key == "omega") {
          EXPECT_EQ(row["tasks"][0][key], At(list, name)) << name;
        }
        EXPECT_EQ(row["parameters"][key], At(list, name)) << name;
      }
    }
  }

  TempDir tmp_;
  std::vector<std::string> names_;
};

// Anchors whose values at layers 0..3 of 5 (t = 0, 1/4, 1/2, 3/4) differ.
const std::vector<double> kList = {0.2, 0.9, 0.5};

TEST_F(LayerParamsTest, TaskArithmeticLambda) {
  ExpectPerLayerConstants(Spec(Method::kTaskArithmetic, 2), "lambda",
                          {0.5, 2.0, 1.0},
                          [](FusionSpec& s, double v) { s.lambda = v; });
}

// density: TIES (streamed when it can), breadcrumbs and DELLA (ranked
// whole; DELLA's draws seeded per tensor).
TEST_F(LayerParamsTest, TiesBreadcrumbsDellaDensity) {
  auto set = [](FusionSpec& s, double v) { s.density = v; };
  ExpectPerLayerConstants(Spec(Method::kTies, 2), "density", kList, set);
  ExpectPerLayerConstants(Spec(Method::kBreadcrumbs, 2), "density", kList, set);
  ExpectPerLayerConstants(Spec(Method::kDella, 2), "density", {0.3, 0.8, 0.5},
                          set);
}

TEST_F(LayerParamsTest, SlerpT) {
  ExpectPerLayerConstants(Spec(Method::kSlerp, 1), "t", {0.0, 1.0, 0.3},
                          [](FusionSpec& s, double v) { s.t = v; });
}

TEST_F(LayerParamsTest, ModelTailorKeepAndOmega) {
  ExpectPerLayerConstants(
      Spec(Method::kTailor, 1), "keep", kList,
      [](FusionSpec& s, double v) { s.tailor.keep_ratio = v; });
  ExpectPerLayerConstants(Spec(Method::kTailor, 1), "omega", {0.0, 1.0, 0.4},
                          [](FusionSpec& s, double v) { s.tailor.omega = v; });
}

// A task's own keep wins over the job's list; the per-task patches record
// what each task got: the list, or the task's number.
TEST_F(LayerParamsTest, TaskKeepWinsAndPatchesRecordTheList) {
  FusionSpec spec = Spec(Method::kTailor, 2);
  spec.tasks[1].keep_ratio = 0.25;
  spec.gradients.keep = kList;
  const nlohmann::json report = Run(spec, "own", true);
  for (const nlohmann::json& row : report["tensors"]) {
    EXPECT_EQ(row["tasks"][0]["keep"],
              At(kList, row["name"].get<std::string>()))
        << row.dump();
    EXPECT_EQ(row["tasks"][1]["keep"], 0.25) << row.dump();
  }
  for (int t = 0; t < 2; ++t) {
    auto patch = PatchFile::Open(
        tmp_.Join(absl::StrCat("own.patch.t", t, ".safetensors")),
        Checkpoint::Options());
    ASSERT_TRUE(patch.ok()) << patch.status();
    EXPECT_EQ((*patch)->knobs()["keep"],
              t == 0 ? nlohmann::json(kList) : nlohmann::json(0.25));
  }
  auto stitched = PatchFile::Open(tmp_.Join("own.patch.safetensors"),
                                  Checkpoint::Options());
  ASSERT_TRUE(stitched.ok()) << stitched.status();
  EXPECT_EQ((*stitched)->knobs()["keep"], nlohmann::json(kList));
}

// The lists are part of the spec a journal belongs to: a journal written
// under another list is discarded, not resumed; under the same list it is.
TEST_F(LayerParamsTest, JournalOfAnotherListIsNotResumed) {
  auto resolver = UriResolver::Create({tmp_.path()});
  ASSERT_TRUE(resolver.ok());
  FusionSpec first = Spec(Method::kTaskArithmetic, 2);
  first.gradients.lambda = {1, 2};
  first.output_uri = tmp_.Join("journal-out");
  auto run = [&](const FusionSpec& spec, CancelAfter* sink) {
    RunOptions options;
    options.journal_dir = tmp_.Join("journal");
    options.progress = sink;
    options.cancel = &sink->cancel;
    return RunFusionJob(spec, *resolver, options);
  };
  CancelAfter cancelled(3);
  ASSERT_EQ(run(first, &cancelled).status().code(),
            absl::StatusCode::kCancelled);
  FusionSpec other = first;
  other.gradients.lambda = {1, 3};
  CancelAfter again(3);
  ASSERT_EQ(run(other, &again).status().code(), absl::StatusCode::kCancelled);
  EXPECT_EQ(again.resumed, 0);
  EXPECT_TRUE(absl::StrContains(again.warnings, "discarded")) << again.warnings;
  CancelAfter resumed(-1);
  absl::StatusOr<nlohmann::json> report = run(other, &resumed);
  ASSERT_TRUE(report.ok()) << report.status();
  EXPECT_GT(resumed.resumed, 0);  // the same list: resumed
  EXPECT_FALSE(absl::StrContains(resumed.warnings, "discarded"))
      << resumed.warnings;
  // The resumed rows name their values as the computed ones do.
  for (const nlohmann::json& row : (*report)["tensors"]) {
    EXPECT_EQ(row["parameters"]["lambda"],
              At({1, 3}, row["name"].get<std::string>()))
        << row.dump();
  }
  Run(other, "fresh", false);
  for (const std::string& name : names_) {
    EXPECT_EQ(Tensor("journal", name), Tensor("fresh", name)) << name;
  }
}

// Without a config.json the largest layer index of the names + 1 is the
// layer count; a config.json whose count is below a tensor's layer is an
// error naming it.
TEST_F(LayerParamsTest, LayerCountFromNamesOrABadConfig) {
  ASSERT_TRUE(RemoveAll(tmp_.Join("base/config.json")).ok());
  FusionSpec spec = Spec(Method::kTaskArithmetic, 1);
  spec.gradients.lambda = {1, 2};
  const nlohmann::json report = Run(spec, "names", false);
  for (const nlohmann::json& row : report["tensors"]) {
    const std::optional<int64_t> layer =
        LayerIndexOf(row["name"].get<std::string>());
    EXPECT_DOUBLE_EQ(row["parameters"]["lambda"].get<double>(),
                     1 + (layer ? *layer / 3.0 : 0))
        << row.dump();
  }
  WriteFileOrDie(tmp_.Join("base/config.json"), "{\"num_hidden_layers\": 2}");
  spec.output_uri = tmp_.Join("bad-out");
  auto resolver = UriResolver::Create({tmp_.path()});
  ASSERT_TRUE(resolver.ok());
  absl::StatusOr<nlohmann::json> bad =
      RunFusionJob(spec, *resolver, RunOptions());
  ASSERT_FALSE(bad.ok());
  EXPECT_EQ(bad.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(absl::StrContains(bad.status().message(), "config.json"))
      << bad.status();
  EXPECT_TRUE(absl::StrContains(bad.status().message(), "is in layer 3"))
      << bad.status();
}

}  // namespace
}  // namespace tailor
