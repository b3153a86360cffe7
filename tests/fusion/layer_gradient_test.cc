// Per-layer parameters (issue #19 point 3): the layer index of a tensor,
// the layer count, mergekit's interpolation (layer_gradient.h) and the
// spec's lists (spec_gradients.h: JSON form, validation, the spec at a
// layer). Torch-free: linked into spec_test.

#include "fusion/layer_gradient.h"

#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "fusion/fusion_spec.h"
#include "fusion/spec_gradients.h"
#include "gtest/gtest.h"

namespace tailor {
namespace {

void ExpectInvalid(const absl::Status& s, const std::string& text) {
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
  EXPECT_TRUE(absl::StrContains(s.message(), text)) << s;
  EXPECT_LT(s.message().size(), 400u) << s;
}

TEST(LayerGradientTest, LayerIndexOfCommonLayouts) {
  EXPECT_EQ(LayerIndexOf("model.layers.7.mlp.up_proj.weight"), 7);
  EXPECT_EQ(LayerIndexOf("transformer.h.12.attn.c_attn.weight"), 12);
  EXPECT_EQ(LayerIndexOf("gpt_neox.layers.0.attention.dense.weight"), 0);
  EXPECT_EQ(LayerIndexOf("model.decoder.layers.31.fc1.bias"), 31);
  EXPECT_EQ(LayerIndexOf("bert.encoder.layer.3.output.dense.weight"), 3);
  // The first index: an expert inside layer 2 is in layer 2.
  EXPECT_EQ(LayerIndexOf("model.layers.2.mlp.experts.5.w1.weight"), 2);
  // Outside the layers.
  EXPECT_EQ(LayerIndexOf("model.embed_tokens.weight"), std::nullopt);
  EXPECT_EQ(LayerIndexOf("model.norm.weight"), std::nullopt);
  EXPECT_EQ(LayerIndexOf("lm_head.weight"), std::nullopt);
  // Digits must be a whole component between two dots.
  EXPECT_EQ(LayerIndexOf("7.weight"), std::nullopt);
  EXPECT_EQ(LayerIndexOf("model.layers.7"), std::nullopt);
  EXPECT_EQ(LayerIndexOf("model.layer7.weight"), std::nullopt);
  EXPECT_EQ(LayerIndexOf("model.layers.-1.weight"), std::nullopt);
  EXPECT_EQ(LayerIndexOf("model..weight"), std::nullopt);
  EXPECT_EQ(LayerIndexOf("a.1234567890.b"), std::nullopt);  // > 9 digits
  EXPECT_EQ(LayerIndexOf("a.123456789.b"), 123456789);
}

TEST(LayerGradientTest, CountLayersFromConfigElseNames) {
  const std::vector<std::string> names = {
      "model.embed_tokens.weight", "model.layers.0.a.weight",
      "model.layers.3.a.weight", "model.norm.weight"};
  EXPECT_EQ(*CountLayers(names, std::nullopt, "c"), 4);
  EXPECT_EQ(*CountLayers({"lm_head.weight"}, std::nullopt, "c"), 0);
  EXPECT_EQ(
      *CountLayers(names, std::string(R"({"num_hidden_layers": 6})"), "c"), 6);
  // A config without the key: the names decide.
  EXPECT_EQ(*CountLayers(names, std::string(R"({"hidden_size": 8})"), "c"), 4);
  ExpectInvalid(
      CountLayers(names, std::string("[1]"), "/m/config.json").status(),
      "/m/config.json: is not a JSON object");
  ExpectInvalid(CountLayers(names, std::string("{oops"), "cfg").status(),
                "cfg: is not a JSON object");
  for (const char* bad :
       {R"({"num_hidden_layers": 0})", R"({"num_hidden_layers": -2})",
        R"({"num_hidden_layers": 2.5})", R"({"num_hidden_layers": "4"})",
        R"({"num_hidden_layers": 2000000})"}) {
    ExpectInvalid(CountLayers(names, std::string(bad), "cfg").status(),
                  "cfg: num_hidden_layers must be an integer");
  }
  ExpectInvalid(
      CountLayers(names, std::string(R"({"num_hidden_layers": 2})"), "cfg")
          .status(),
      "tensor 'model.layers.3.a.weight' is in layer 3");
}

TEST(LayerGradientTest, PositionsAsMergekitPlansThem) {
  EXPECT_EQ(GradientPosition(std::nullopt, 5), 0.0);  // embeddings, norm
  EXPECT_EQ(GradientPosition(0, 5), 0.0);
  EXPECT_EQ(GradientPosition(1, 5), 0.25);
  EXPECT_EQ(GradientPosition(4, 5), 1.0);
  EXPECT_EQ(GradientPosition(0, 1), 1.0);  // one layer: t = 1
}

// Hand-computed: anchors 0.1, 0.5, 0.3 at t = 0, 0.5, 1.
TEST(LayerGradientTest, InterpolatesLinearlyBetweenEvenAnchors) {
  const std::vector<double> v = {0.1, 0.5, 0.3};
  EXPECT_DOUBLE_EQ(EvaluateGradient(v, 0.0), 0.1);   // anchor 0
  EXPECT_DOUBLE_EQ(EvaluateGradient(v, 0.25), 0.3);  // 0.1 + 0.5 (0.5 - 0.1)
  EXPECT_DOUBLE_EQ(EvaluateGradient(v, 0.5), 0.5);   // anchor 1
  EXPECT_DOUBLE_EQ(EvaluateGradient(v, 0.75), 0.4);  // 0.5 + 0.5 (0.3 - 0.5)
  EXPECT_DOUBLE_EQ(EvaluateGradient(v, 1.0), 0.3);   // the last anchor
  // Over 5 layers of 4 anchors: t = i/4, s = 3i/4.
  const std::vector<double> w = {0, 1, 0, 1};
  const double want[] = {0, 0.75, 0.5, 0.25, 1};
  for (int i = 0; i < 5; ++i) {
    EXPECT_DOUBLE_EQ(EvaluateGradient(w, GradientPosition(i, 5)), want[i]) << i;
  }
  // A tensor outside the layers gets the first value, like layer 0.
  EXPECT_EQ(EvaluateGradient(w, GradientPosition(std::nullopt, 5)), 0);
  // One value is the scalar everywhere.
  for (double t : {0.0, 0.3, 1.0}) EXPECT_EQ(EvaluateGradient({0.7}, t), 0.7);
}

TEST(SpecGradientsTest, KeysTakeANumberOrAList) {
  absl::StatusOr<FusionSpec> s = FusionSpec::FromJson({{"keep", {0.1, 0.2}},
                                                       {"omega", 0.3},
                                                       {"lambda", {1, 2, 3}},
                                                       {"density", {0.5}},
                                                       {"t", {0, 1}}});
  ASSERT_TRUE(s.ok()) << s.status();
  EXPECT_EQ(s->gradients.keep, (std::vector<double>{0.1, 0.2}));
  EXPECT_TRUE(s->gradients.omega.empty());
  EXPECT_EQ(s->tailor.omega, 0.3);
  EXPECT_EQ(s->gradients.lambda, (std::vector<double>{1, 2, 3}));
  EXPECT_EQ(s->gradients.density, (std::vector<double>{0.5}));
  EXPECT_EQ(s->gradients.t, (std::vector<double>{0, 1}));
  // ToJson writes the lists at their keys; FromJson reads them back.
  const nlohmann::json j = s->ToJson(true);
  EXPECT_EQ(j["keep"], nlohmann::json({0.1, 0.2}));
  EXPECT_EQ(j["density"], nlohmann::json({0.5}));  // stays a list
  EXPECT_EQ(j["omega"], 0.3);
  absl::StatusOr<FusionSpec> back = FusionSpec::FromJson(j);
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_EQ(back->ToJson(true), j);
  // A spec without lists writes exactly what it wrote before.
  FusionSpec plain;
  EXPECT_TRUE(plain.ToJson()["keep"].is_number());
  EXPECT_FALSE(plain.ToJson().contains("t"));
}

TEST(SpecGradientsTest, BadListsNameTheFieldAndIndex) {
  ExpectInvalid(
      FusionSpec::FromJson({{"keep", nlohmann::json::array()}}).status(),
      "keep: a list over the layers holds 1 to 1024 numbers, not 0");
  ExpectInvalid(
      FusionSpec::FromJson({{"t", std::vector<double>(1025, 0.5)}}).status(),
      "t: a list over the layers holds 1 to 1024 numbers, not 1025");
  ExpectInvalid(FusionSpec::FromJson({{"lambda", {1, "2"}}}).status(),
                "lambda[1]: must be a number");
  ExpectInvalid(FusionSpec::FromJson({{"omega", {{"a", 1}}}}).status(),
                "omega: must be a number, or a list of numbers");
  ExpectInvalid(FusionSpec::FromJson({{"density", "0.5"}}).status(),
                "density: must be a number, or a list");
  FusionSpec s;
  s.pretrained_uri = "b";
  s.tasks.resize(1);
  s.tasks[0].finetuned_uri = "a";
  s.output_uri = "o";
  ASSERT_TRUE(s.Validate().ok()) << s.Validate();
  struct Case {
    const char* key;
    std::vector<double> list;
    const char* error;
  };
  const Case cases[] = {
      {"keep", {0.1, 0, 0.3}, "keep[1]: must be in (0, 1], not 0"},
      {"omega", {1.5}, "omega[0]: must be in [0, 1], not 1.5"},
      {"lambda", {1, 2, -1}, "lambda[2]: must be a finite number > 0"},
      {"lambda", {1, INFINITY}, "lambda[1]: must be a finite number > 0"},
      {"density", {0.5, 1.5}, "density[1]: must be in (0, 1], not 1.5"},
      {"t", {0, NAN}, "t[1]: must be in [0, 1]"},
  };
  for (const Case& c : cases) {
    FusionSpec bad = s;
    GradientOf(bad.gradients, c.key) = c.list;
    ExpectInvalid(bad.Validate(), c.error);
  }
  // della: every density keeps density +- epsilon within (0, 1].
  FusionSpec della = s;
  della.method = Method::kDella;
  della.epsilon = 0.2;
  della.gradients.density = {0.5, 0.1};
  ExpectInvalid(della.Validate(), "density[1]: della keeps entries");
  della.gradients.density = {0.5, 0.3, 1};
  EXPECT_TRUE(della.Validate().ok()) << della.Validate();
  FusionSpec long_list = s;
  long_list.gradients.keep.assign(1025, 0.5);
  ExpectInvalid(long_list.Validate(), "keep: a list over the layers holds");
}

TEST(SpecGradientsTest, SpecAtPositionReplacesTheScalars) {
  FusionSpec s;
  s.tailor.keep_ratio = 0.9;  // replaced
  s.gradients.keep = {0.1, 0.3};
  s.gradients.lambda = {2};
  s.gradients.t = {0, 0.5, 1};
  s.density = 0.4;  // no list: kept
  const FusionSpec at = SpecAtPosition(s, 0.5);
  EXPECT_TRUE(at.gradients.empty());
  EXPECT_DOUBLE_EQ(at.tailor.keep_ratio, 0.2);
  EXPECT_EQ(at.lambda, 2);
  EXPECT_EQ(at.t, 0.5);
  EXPECT_EQ(at.density, 0.4);
  EXPECT_EQ(ScalarOf(at, "keep"), at.tailor.keep_ratio);
  EXPECT_EQ(SpecAtPosition(s, 0).tailor.keep_ratio, 0.1);
}

}  // namespace
}  // namespace tailor
