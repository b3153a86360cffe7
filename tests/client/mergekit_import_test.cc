// mergekit configs read as job files (client/mergekit_import.h): the
// shapes of mergekit's own examples map to our spec; what we do not
// support is an error naming the field.

#include "client/mergekit_import.h"

#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "api/spec_convert.h"
#include "client/job_file.h"
#include "testing/temp_dir.h"
#include "util/file_util.h"

namespace tailor::cli {
namespace {

namespace v1 = ::tailor::v1;
using ::tailor::testing::TempDir;

class MergekitImportTest : public ::testing::Test {
 protected:
  absl::StatusOr<FusionSpec> Load(const std::string& yaml) {
    const std::string path = dir_.Join("merge.yml");
    EXPECT_TRUE(WriteFileAtomically(path, yaml).ok());
    return LoadJobFile(path);
  }

  void ExpectError(const std::string& yaml, const std::string& field,
                   const std::string& text) {
    absl::StatusOr<FusionSpec> s = Load(yaml);
    ASSERT_FALSE(s.ok()) << yaml;
    EXPECT_EQ(s.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_TRUE(absl::StrContains(s.status().message(), field + ": "))
        << s.status();
    EXPECT_TRUE(absl::StrContains(s.status().message(), text)) << s.status();
    EXPECT_LT(s.status().message().size(), 400u);
  }

  // pretrained /b, out /o, `method`, one task per URI.
  static FusionSpec SpecWith(Method method,
                             const std::vector<std::string>& tasks) {
    FusionSpec spec;
    spec.pretrained_uri = "/b";
    spec.output_uri = "/o";
    spec.method = method;
    for (const std::string& uri : tasks) {
      spec.tasks.emplace_back();
      spec.tasks.back().finetuned_uri = uri;
    }
    return spec;
  }

  TempDir dir_;
};

TEST_F(MergekitImportTest, LinearWithWeightsAndBaseModel) {
  absl::StatusOr<FusionSpec> s = Load(R"(
models:
  - model: psmathur/orca_mini_v3_13b
    parameters:
      weight: 1.0
  - model: WizardLM/WizardLM-13B-V1.2
    parameters:
      weight: 0.3
  - model: garage-bAInd/Platypus2-13B
    parameters:
      weight: 0.5
merge_method: linear
base_model: /models/llama-2-13b
dtype: float16
)");
  ASSERT_TRUE(s.ok()) << s.status();
  EXPECT_EQ(s->method, Method::kLinear);
  EXPECT_EQ(s->pretrained_uri, "/models/llama-2-13b");
  ASSERT_EQ(s->tasks.size(), 3u);
  EXPECT_EQ(s->tasks[0].label, "orca_mini_v3_13b");
  EXPECT_EQ(s->tasks[1].weight, 0.3);
  EXPECT_EQ(s->tasks[2].weight, 0.5);
  // Relative model paths are relative to the config's directory.
  EXPECT_EQ(s->tasks[2].finetuned_uri, dir_.Join("garage-bAInd/Platypus2-13B"));
  EXPECT_TRUE(s->NormalizeWeights());
  s->output_uri = "/out";
  EXPECT_TRUE(s->Validate().ok()) << s->Validate();
}

TEST_F(MergekitImportTest, TiesTakesMergekitsRulesAndSkipsTheBase) {
  absl::StatusOr<FusionSpec> s = Load(R"(
models:
  - model: /m/Mistral-7B-v0.1
  - model: /m/Mistral-7B-Instruct-v0.2
    parameters:
      density: 0.5
      weight: 0.5
  - model: /m/BioMistral-7B
    parameters:
      density: 0.5
      weight: 0.5
merge_method: ties
base_model: /m/Mistral-7B-v0.1
parameters:
  normalize: false
  int8_mask: true
dtype: float16
)");
  ASSERT_TRUE(s.ok()) << s.status();
  EXPECT_EQ(s->method, Method::kTies);
  ASSERT_EQ(s->tasks.size(), 2u);  // the base model is not a task
  EXPECT_EQ(s->density, 0.5);
  EXPECT_EQ(s->count_rule, CountRule::kFloor);
  EXPECT_EQ(s->sign_cancel, SignCancel::kPositive);
  EXPECT_EQ(s->normalize_weights, false);
  EXPECT_EQ(s->tasks[1].weight, 0.5);
}

TEST_F(MergekitImportTest, SlerpDareTiesDellaBreadcrumbsModelStock) {
  absl::StatusOr<FusionSpec> s = Load(R"(
models:
  - model: /m/a
  - model: /m/b
merge_method: slerp
base_model: /m/a
parameters:
  t: 0.3
dtype: bfloat16
)");
  ASSERT_TRUE(s.ok()) << s.status();
  EXPECT_EQ(s->method, Method::kSlerp);
  EXPECT_EQ(s->t, 0.3);
  ASSERT_EQ(s->tasks.size(), 1u);
  EXPECT_EQ(s->tasks[0].finetuned_uri, "/m/b");

  s = Load(R"(
merge_method: della
base_model: /m/base
models:
  - model: /m/a
    parameters: {weight: 1, density: 0.4, epsilon: 0.1}
  - model: /m/b
    parameters: {weight: 2, density: 0.4, epsilon: 0.1}
parameters:
  lambda: 0.9
)");
  ASSERT_TRUE(s.ok()) << s.status();
  EXPECT_EQ(s->method, Method::kDella);
  EXPECT_EQ(s->epsilon, 0.1);
  EXPECT_EQ(s->lambda, 0.9);
  EXPECT_EQ(s->sign_cancel, SignCancel::kPositive);

  s = Load(
      "merge_method: breadcrumbs\nbase_model: /b\nmodels:\n"
      "  - model: /a\n    parameters: {density: 0.9, gamma: 0.02}\n");
  ASSERT_TRUE(s.ok()) << s.status();
  EXPECT_EQ(s->gamma, 0.02);
  EXPECT_EQ(s->count_rule, CountRule::kFloor);

  s = Load(
      "merge_method: dare_ties\nbase_model: /b\nmodels:\n"
      "  - model: /a\n    parameters: {density: 0.53, weight: 0.4}\n");
  ASSERT_TRUE(s.ok()) << s.status();
  EXPECT_EQ(s->method, Method::kDareTies);
  // mergekit's density is the kept fraction: DARE's drop is 1 - density.
  EXPECT_DOUBLE_EQ(s->drop, 1.0 - 0.53);

  ExpectError(
      "merge_method: dare_ties\nbase_model: /b\nmodels:\n"
      "  - model: /a\n    parameters: {density: [0.2, 0.8]}\n",
      "models[0].parameters.density", "not supported for dare_ties");

  s = Load(
      "merge_method: model_stock\nbase_model: /b\nmodels:\n"
      "  - model: /a\n  - model: /c\n  - model: /b\n");
  ASSERT_TRUE(s.ok()) << s.status();
  EXPECT_EQ(s->method, Method::kModelStock);
  EXPECT_EQ(s->tasks.size(), 2u);
}

TEST_F(MergekitImportTest, UnsupportedFieldsAreNamed) {
  // mergekit's examples/ties.yml: a weight gradient (density, t and lambda
  // take lists; weights do not).
  ExpectError(R"(
models:
  - model: garage-bAInd/Platypus2-13B
    parameters:
      density: 0.5
      weight: [0, 0.3, 0.7, 1] # weight gradient
merge_method: ties
base_model: TheBloke/Llama-2-13B-fp16
)",
              "models[0].parameters.weight", "gradients");
  // A filtered density, and a filter inside a list.
  ExpectError(R"(
models: [{model: a}]
parameters:
  density:
    - filter: mlp
      value: [0.5, 0.2]
    - value: 0.3
merge_method: ties
base_model: b
)",
              "parameters.density[0]", "filter/value entries");
  ExpectError(
      "merge_method: ties\nbase_model: b\nmodels: [{model: a}]\n"
      "parameters: {density: []}\n",
      "parameters.density", "1 to 1024 numbers, not 0");
  ExpectError(
      "merge_method: ties\nbase_model: b\nmodels: [{model: a}]\n"
      "parameters: {density: [0.5, x]}\n",
      "parameters.density[1]", "must be a number");
  ExpectError(
      "merge_method: ties\nbase_model: b\nmodels: [{model: a}]\n"
      "parameters: {gamma: [0.1, 0.2]}\n",
      "parameters.gamma", "gradients");
  // A filtered weight.
  ExpectError(R"(
models:
  - model: a
    parameters:
      weight:
        - filter: mlp
          value: 0.5
        - value: 0
merge_method: ties
base_model: b
)",
              "models[0].parameters.weight", "filter");
  // mergekit's examples/gradient-slerp.yml.
  ExpectError(R"(
slices:
  - sources:
      - model: psmathur/orca_mini_v3_13b
        layer_range: [0, 40]
      - model: garage-bAInd/Platypus2-13B
        layer_range: [0, 40]
merge_method: slerp
base_model: psmathur/orca_mini_v3_13b
)",
              "slices", "not supported");
  ExpectError(
      "merge_method: passthrough\nbase_model: b\nmodels: [{model: a}]\n",
      "merge_method", "not supported");
  ExpectError(
      "merge_method: linear\nbase_model: b\nmodels: [{model: a}]\n"
      "tokenizer_source: union\n",
      "tokenizer_source", "tokenizer");
  ExpectError("merge_method: ties\nmodels: [{model: a}]\n", "base_model",
              "required");
  ExpectError(
      "merge_method: ties\nbase_model: b\nmodels:\n"
      "  - model: a\n    parameters: {density: 0.5}\n"
      "  - model: c\n    parameters: {density: 0.7}\n",
      "models[1].parameters.density", "one value per job");
  ExpectError("merge_method: ties\nbase_model: b\nmodels: [{model: a+lora}]\n",
              "models[0].model", "LoRA");
  ExpectError(
      "merge_method: linear\nbase_model: b\nmodels: [{model: a}]\n"
      "dtype: int8\n",
      "dtype", "float32, float16 or bfloat16");
  ExpectError(
      "merge_method: della\nbase_model: b\nmodels: [{model: a}]\n"
      "parameters: {rescale: false}\n",
      "parameters.rescale", "not supported");
  ExpectError(
      "merge_method: ties\nbase_model: b\nmodels: [{model: a}]\n"
      "out_dtype: float16\n",
      "out_dtype", "not supported");
}

TEST_F(MergekitImportTest, OrdinaryJobFilesAreNotMergekitConfigs) {
  absl::StatusOr<FusionSpec> s = Load(
      "pretrained: /b\nmethod: linear\nfinetuned: [/a, /c]\n"
      "weights: [1, 3]\nnormalize-weights: false\nt: 0.2\n");
  ASSERT_TRUE(s.ok()) << s.status();
  EXPECT_EQ(s->method, Method::kLinear);
  EXPECT_EQ(s->tasks[1].weight, 3);
  EXPECT_EQ(s->normalize_weights, false);
  s = Load("pretrained: /b\nfinetuned: [/a, /c]\nweights: [1]\n");
  ASSERT_FALSE(s.ok());
  EXPECT_TRUE(absl::StrContains(s.status().message(), "weight: 1 given for 2"))
      << s.status();
}

// mergekit gradients (issue #19 point 3): t, lambda and density lists over
// the layers import to the spec's lists, the same spec as a job file giving
// them; the same list from every model is one per-job list.
TEST_F(MergekitImportTest, GradientListsImportToTheSpecsLists) {
  absl::StatusOr<FusionSpec> slerp = Load(R"(
merge_method: slerp
base_model: /m/base
models: [{model: /m/base}, {model: /m/chat}]
parameters:
  t: [0, 0.5, 0.3, 0.7, 1]
)");
  ASSERT_TRUE(slerp.ok()) << slerp.status();
  EXPECT_EQ(slerp->gradients.t, (std::vector<double>{0, 0.5, 0.3, 0.7, 1}));
  absl::StatusOr<FusionSpec> native = Load(R"(
pretrained: /m/base
method: slerp
tasks: [{finetuned: /m/chat, label: chat}]
t: [0, 0.5, 0.3, 0.7, 1]
density: 1
)");
  ASSERT_TRUE(native.ok()) << native.status();
  EXPECT_EQ(slerp->ToJson(true), native->ToJson(true));
  // A job file's list is checked by element, naming the key and index.
  ExpectError("pretrained: /b\nfinetuned: [/a]\nkeep: [0.1, abc]\n", "keep[1]",
              "must be a number");
  ExpectError("pretrained: /b\nfinetuned: [/a]\nomega: []\n", "omega",
              "1 to 1024 numbers, not 0");

  absl::StatusOr<FusionSpec> ties = Load(R"(
merge_method: ties
base_model: /m/base
models:
  - model: /m/a
    parameters: {density: [1, 0.7, 0.1], weight: 1}
  - model: /m/b
    parameters: {density: [1, 0.7, 0.1], weight: 0.5}
parameters:
  lambda: [1, 2]
)");
  ASSERT_TRUE(ties.ok()) << ties.status();
  EXPECT_EQ(ties->gradients.density, (std::vector<double>{1, 0.7, 0.1}));
  EXPECT_EQ(ties->gradients.lambda, (std::vector<double>{1, 2}));
  EXPECT_EQ(ties->ToJson()["density"], nlohmann::json({1, 0.7, 0.1}));
  // Another model's different list is still one value per job.
  ExpectError(R"(
merge_method: ties
base_model: /m/base
models:
  - model: /m/a
    parameters: {density: [1, 0.7]}
  - model: /m/b
    parameters: {density: [1, 0.5]}
)",
              "models[1].parameters.density", "one value per job");
}

// Lists survive the proto: layer_gradients there, the keys' values in the
// engine's JSON; old clients' scalars still work; a scalar and its list
// both set is refused naming the field.
TEST_F(MergekitImportTest, LayerGradientsRoundTripThroughTheProto) {
  FusionSpec spec = SpecWith(Method::kTies, {"/a"});
  spec.gradients.density = {0.9, 0.1};
  spec.gradients.keep = {0.5};
  spec.lambda = 1.5;  // a scalar beside the lists
  const nlohmann::json j = spec.ToJson(/*with_overwrite=*/true);
  absl::StatusOr<v1::FusionJobSpec> proto = api::SpecFromJson(j);
  ASSERT_TRUE(proto.ok()) << proto.status();
  ASSERT_EQ(proto->layer_gradients().density_size(), 2);
  EXPECT_EQ(proto->layer_gradients().density(1), 0.1);
  EXPECT_EQ(proto->layer_gradients().keep_size(), 1);
  EXPECT_FALSE(proto->has_density());
  EXPECT_FALSE(proto->has_keep());
  EXPECT_TRUE(proto->has_lambda());
  EXPECT_EQ(proto->layer_gradients().lambda_size(), 0);
  EXPECT_TRUE(api::CheckLayerGradients(*proto).ok());
  absl::StatusOr<FusionSpec> back =
      FusionSpec::FromJson(api::SpecToJson(*proto));
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_EQ(back->ToJson(true), j);
  // The wire form too.
  v1::FusionJobSpec parsed;
  ASSERT_TRUE(parsed.ParseFromString(proto->SerializeAsString()));
  EXPECT_EQ(api::SpecToJson(parsed), api::SpecToJson(*proto));
  // An old client's scalar density.
  v1::FusionJobSpec old;
  old.set_pretrained("/b");
  old.set_density(0.3);
  absl::StatusOr<FusionSpec> scalar =
      FusionSpec::FromJson(api::SpecToJson(old));
  ASSERT_TRUE(scalar.ok()) << scalar.status();
  EXPECT_EQ(scalar->density, 0.3);
  EXPECT_TRUE(scalar->gradients.empty());
  // Both forms of one parameter.
  old.mutable_layer_gradients()->add_density(0.5);
  absl::Status both = api::CheckLayerGradients(old);
  EXPECT_EQ(both.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(absl::StrContains(both.message(), "density: give either"))
      << both;
  // A non-number in a list.
  absl::StatusOr<v1::FusionJobSpec> bad =
      api::SpecFromJson({{"t", {0.5, "x"}}});
  ASSERT_FALSE(bad.ok());
  EXPECT_TRUE(absl::StrContains(bad.status().message(),
                                "layer_gradients.t[1]: must be a number"))
      << bad.status();
}

// The new fields survive the proto (tailord's API) both ways: enums by
// name, optional numbers and booleans by presence.
TEST_F(MergekitImportTest, NewFieldsRoundTripThroughTheProto) {
  FusionSpec spec = SpecWith(Method::kModelStock, {"/a", "/c"});
  spec.t = 0.25;
  spec.gamma = 0.03;
  spec.epsilon = 0.05;
  spec.normalize_weights = false;
  spec.count_rule = CountRule::kFloor;
  spec.sign_cancel = SignCancel::kPositive;
  const nlohmann::json j = spec.ToJson(/*with_overwrite=*/true);
  absl::StatusOr<v1::FusionJobSpec> proto = api::SpecFromJson(j);
  ASSERT_TRUE(proto.ok()) << proto.status();
  EXPECT_EQ(proto->method(), v1::METHOD_MODEL_STOCK);
  EXPECT_EQ(proto->count_rule(), v1::COUNT_RULE_FLOOR);
  EXPECT_EQ(proto->sign_cancel(), v1::SIGN_CANCEL_POSITIVE);
  EXPECT_TRUE(proto->has_normalize_weights());
  absl::StatusOr<FusionSpec> back =
      FusionSpec::FromJson(api::SpecToJson(*proto));
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_EQ(back->ToJson(true), j);
  spec.method = Method::kDareTies;
  spec.tasks[1].weight = 0.5;
  proto = api::SpecFromJson(spec.ToJson(true));
  ASSERT_TRUE(proto.ok()) << proto.status();
  EXPECT_EQ(proto->method(), v1::METHOD_DARE_TIES);
  EXPECT_FALSE(proto->tasks(0).has_weight());
  EXPECT_EQ(proto->tasks(1).weight(), 0.5);
}

}  // namespace
}  // namespace tailor::cli
