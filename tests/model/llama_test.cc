#include "model/llama.h"

#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <cmath>
#include <map>
#include <set>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "fusion/calibration.h"
#include "io/checkpoint.h"
#include "model/hessian_collector.h"
#include "model/llama_config.h"
#include "nlohmann/json.hpp"
#include "testing/test_util.h"
#include "util/file_util.h"

namespace tailor {
namespace {

using ::tailor::testing::BitEqual;
using ::tailor::testing::RawTensor;
using ::tailor::testing::SerializeSafetensors;
using ::tailor::testing::TempDir;
using ::tailor::testing::ToRaw;
using ::tailor::testing::WriteFileOrDie;
using Json = nlohmann::json;

// Grouped-query attention, untied head, non-default theta and eps.
LlamaConfig GqaConfig() {
  LlamaConfig c;
  c.hidden_size = 16;
  c.intermediate_size = 24;
  c.num_hidden_layers = 2;
  c.num_attention_heads = 4;
  c.num_key_value_heads = 2;
  c.rms_norm_eps = 1e-5;
  c.rope_theta = 500.0;
  c.vocab_size = 11;
  c.max_position_embeddings = 64;
  return c;
}

// Plain multi-head attention with the head tied to the embedding.
LlamaConfig TiedConfig() {
  LlamaConfig c;
  c.hidden_size = 16;
  c.intermediate_size = 20;
  c.num_hidden_layers = 2;
  c.num_attention_heads = 2;
  c.num_key_value_heads = 2;
  c.vocab_size = 13;
  c.tie_word_embeddings = true;
  return c;
}

LlamaModel InitOrDie(const LlamaConfig& config, at::ScalarType dtype,
                     uint64_t seed = 1) {
  absl::StatusOr<LlamaModel> model =
      LlamaModel::Init(config, seed, dtype, at::kCPU);
  EXPECT_TRUE(model.ok()) << model.status();
  return *std::move(model);
}

// Replaces the parameters by values large enough that every part of the
// network matters (attention far from uniform, norms far from 1).
void Randomize(const LlamaModel& model, uint64_t seed) {
  at::manual_seed(seed);
  at::NoGradGuard no_grad;
  for (auto& [name, p] : model.NamedParameters()) {
    const at::Tensor r = at::randn(p.sizes(), at::kDouble);
    if (absl::EndsWith(name, "norm.weight")) {
      p.copy_(1.0 + 0.3 * r);
    } else {
      p.copy_(0.4 * r);
    }
  }
}

at::Tensor RandomTokens(int64_t b, int64_t t, int64_t vocab) {
  return at::randint(vocab, {b, t}, at::kLong);
}

double MaxAbsDiff(const at::Tensor& a, const at::Tensor& b) {
  return (a.to(at::kDouble) - b.to(at::kDouble)).abs().max().item<double>();
}

// ---------------------------------------------------------------------------
// An independent float64 reference: explicit loops over std::vector.

using Vec = std::vector<double>;

struct NaiveLlama {
  explicit NaiveLlama(const LlamaModel& model) : c(model.config()) {
    for (const auto& [name, p] : model.parameters()) {
      const at::Tensor d = p.detach().to(at::kDouble).contiguous();
      w[name] = Vec(d.data_ptr<double>(), d.data_ptr<double>() + d.numel());
      cols[name] = d.dim() == 2 ? d.size(1) : d.size(0);
    }
  }

  // y = W x for W [out, in] stored row-major.
  Vec Linear(const std::string& name, const Vec& x) const {
    const Vec& m = w.at(name);
    const size_t in = static_cast<size_t>(cols.at(name));
    EXPECT_EQ(x.size(), in) << name;
    const size_t out = m.size() / in;
    Vec y(out, 0.0);
    for (size_t r = 0; r < out; ++r) {
      for (size_t k = 0; k < in; ++k) y[r] += m[r * in + k] * x[k];
    }
    return y;
  }

  Vec RmsNorm(const std::string& name, const Vec& x) const {
    double ss = 0;
    for (double v : x) ss += v * v;
    const double inv = 1.0 / std::sqrt(ss / x.size() + c.rms_norm_eps);
    Vec y(x.size());
    for (size_t i = 0; i < x.size(); ++i) y[i] = w.at(name)[i] * x[i] * inv;
    return y;
  }

  // Rotates each head's pairs (j, j + d/2) by pos * theta^(-2j/d).
  void Rope(Vec& x, int64_t heads, int64_t pos) const {
    const int64_t d = c.head_dim();
    for (int64_t h = 0; h < heads; ++h) {
      for (int64_t j = 0; j < d / 2; ++j) {
        const double angle =
            pos * std::pow(c.rope_theta, -2.0 * static_cast<double>(j) / d);
        double& a = x[h * d + j];
        double& b = x[h * d + j + d / 2];
        const double a0 = a, b0 = b;
        a = a0 * std::cos(angle) - b0 * std::sin(angle);
        b = b0 * std::cos(angle) + a0 * std::sin(angle);
      }
    }
  }

  // Logits [T][V] of one sequence.
  std::vector<Vec> Forward(const std::vector<int64_t>& tokens) const {
    const int64_t t_len = static_cast<int64_t>(tokens.size());
    const int64_t hs = c.hidden_size, d = c.head_dim();
    const int64_t nh = c.num_attention_heads, nkv = c.num_key_value_heads;
    const int64_t group = nh / nkv;
    std::vector<Vec> h(t_len);
    for (int64_t t = 0; t < t_len; ++t) {
      const Vec& e = w.at("model.embed_tokens.weight");
      h[t] = Vec(e.begin() + tokens[t] * hs, e.begin() + (tokens[t] + 1) * hs);
    }
    for (int64_t l = 0; l < c.num_hidden_layers; ++l) {
      const std::string p = absl::StrCat("model.layers.", l, ".");
      std::vector<Vec> q(t_len), k(t_len), v(t_len);
      for (int64_t t = 0; t < t_len; ++t) {
        const Vec x = RmsNorm(p + "input_layernorm.weight", h[t]);
        q[t] = Linear(p + "self_attn.q_proj.weight", x);
        k[t] = Linear(p + "self_attn.k_proj.weight", x);
        v[t] = Linear(p + "self_attn.v_proj.weight", x);
        Rope(q[t], nh, t);
        Rope(k[t], nkv, t);
      }
      for (int64_t t = 0; t < t_len; ++t) {
        Vec attn(nh * d, 0.0);
        for (int64_t head = 0; head < nh; ++head) {
          const int64_t kvh = head / group;
          Vec score(t + 1);
          double top = -INFINITY;
          for (int64_t s = 0; s <= t; ++s) {
            double dot = 0;
            for (int64_t e = 0; e < d; ++e) {
              dot += q[t][head * d + e] * k[s][kvh * d + e];
            }
            score[s] = dot / std::sqrt(static_cast<double>(d));
            top = std::max(top, score[s]);
          }
          double z = 0;
          for (int64_t s = 0; s <= t; ++s) {
            score[s] = std::exp(score[s] - top);
            z += score[s];
          }
          for (int64_t s = 0; s <= t; ++s) {
            for (int64_t e = 0; e < d; ++e) {
              attn[head * d + e] += score[s] / z * v[s][kvh * d + e];
            }
          }
        }
        const Vec o = Linear(p + "self_attn.o_proj.weight", attn);
        for (int64_t i = 0; i < hs; ++i) h[t][i] += o[i];
      }
      for (int64_t t = 0; t < t_len; ++t) {
        const Vec x = RmsNorm(p + "post_attention_layernorm.weight", h[t]);
        const Vec g = Linear(p + "mlp.gate_proj.weight", x);
        const Vec u = Linear(p + "mlp.up_proj.weight", x);
        Vec a(g.size());
        for (size_t i = 0; i < g.size(); ++i) {
          a[i] = g[i] / (1.0 + std::exp(-g[i])) * u[i];
        }
        const Vec down = Linear(p + "mlp.down_proj.weight", a);
        for (int64_t i = 0; i < hs; ++i) h[t][i] += down[i];
      }
    }
    const std::string head =
        c.tie_word_embeddings ? "model.embed_tokens.weight" : "lm_head.weight";
    std::vector<Vec> logits(t_len);
    for (int64_t t = 0; t < t_len; ++t) {
      logits[t] = Linear(head, RmsNorm("model.norm.weight", h[t]));
    }
    return logits;
  }

  const LlamaConfig& c;
  std::map<std::string, Vec> w;
  std::map<std::string, int64_t> cols;
};

// Max |model - naive| over a batch.
double DiffToNaive(const LlamaModel& model, const at::Tensor& tokens) {
  const at::Tensor logits = model.Forward(tokens).to(at::kDouble);
  const NaiveLlama naive(model);
  double worst = 0;
  for (int64_t b = 0; b < tokens.size(0); ++b) {
    std::vector<int64_t> seq;
    for (int64_t t = 0; t < tokens.size(1); ++t) {
      seq.push_back(tokens[b][t].item<int64_t>());
    }
    const std::vector<Vec> ref = naive.Forward(seq);
    for (int64_t t = 0; t < tokens.size(1); ++t) {
      for (int64_t v = 0; v < model.config().vocab_size; ++v) {
        worst = std::max(worst,
                         std::abs(logits[b][t][v].item<double>() - ref[t][v]));
      }
    }
  }
  return worst;
}

TEST(LlamaForwardTest, MatchesNaiveFloat64ReferenceWithGqa) {
  const LlamaModel model = InitOrDie(GqaConfig(), at::kDouble);
  Randomize(model, 3);
  at::manual_seed(4);
  const at::Tensor tokens = RandomTokens(2, 5, 11);
  const at::Tensor logits = model.Forward(tokens);
  EXPECT_EQ(logits.scalar_type(), at::kDouble);
  EXPECT_EQ(logits.sizes(), (std::vector<int64_t>{2, 5, 11}));
  const double diff = DiffToNaive(model, tokens);
  EXPECT_LT(diff, 1e-9);
  // The logits are O(1): the bound is meaningful.
  EXPECT_GT(logits.abs().max().item<double>(), 0.5);
  std::cout << "max |forward - naive| (GQA, float64) = " << diff << "\n";
}

TEST(LlamaForwardTest, MatchesNaiveFloat64ReferenceTied) {
  const LlamaModel model = InitOrDie(TiedConfig(), at::kDouble);
  EXPECT_EQ(model.parameters().count("lm_head.weight"), 0u);
  Randomize(model, 5);
  at::manual_seed(6);
  const at::Tensor tokens = RandomTokens(3, 7, 13);
  const double diff = DiffToNaive(model, tokens);
  EXPECT_LT(diff, 1e-9);
  std::cout << "max |forward - naive| (tied, float64) = " << diff << "\n";
}

TEST(LlamaForwardTest, Float32CloseToFloat64AndCausal) {
  const LlamaModel f64 = InitOrDie(GqaConfig(), at::kDouble);
  Randomize(f64, 3);
  const LlamaModel f32 = InitOrDie(GqaConfig(), at::kFloat);
  {
    at::NoGradGuard no_grad;
    for (const auto& [name, p] : f32.NamedParameters()) {
      p.copy_(f64.parameters().at(name));
    }
  }
  at::manual_seed(8);
  at::Tensor tokens = RandomTokens(2, 6, 11);
  const at::Tensor a = f32.Forward(tokens);
  EXPECT_EQ(a.scalar_type(), at::kFloat);
  EXPECT_LT(MaxAbsDiff(a, f64.Forward(tokens)), 1e-4);

  // Changing the last token changes nothing before it.
  at::Tensor changed = tokens.clone();
  changed[0][5] = (tokens[0][5].item<int64_t>() + 1) % 11;
  const at::Tensor b = f32.Forward(changed);
  EXPECT_TRUE(BitEqual(a.narrow(1, 0, 5), b.narrow(1, 0, 5)));
  EXPECT_GT(MaxAbsDiff(a.narrow(1, 5, 1), b.narrow(1, 5, 1)), 1e-3);
}

TEST(LlamaForwardTest, BFloat16RunsWithFloat32Logits) {
  const LlamaModel model = InitOrDie(GqaConfig(), at::kBFloat16);
  at::manual_seed(9);
  const at::Tensor logits = model.Forward(RandomTokens(2, 4, 11));
  EXPECT_EQ(logits.scalar_type(), at::kFloat);
  EXPECT_TRUE(at::isfinite(logits).all().item<bool>());
}

TEST(LlamaModelTest, InitIsDeterministicAndHfLike) {
  const LlamaConfig config = GqaConfig();
  const LlamaModel a = InitOrDie(config, at::kFloat, 7);
  const LlamaModel b = InitOrDie(config, at::kFloat, 7);
  const LlamaModel c = InitOrDie(config, at::kFloat, 8);
  const LlamaModel d = InitOrDie(config, at::kDouble, 7);
  const auto shapes = LlamaModel::ParameterShapes(config);
  ASSERT_EQ(a.parameters().size(), shapes.size());
  EXPECT_EQ(shapes.size(), 2u + 1u + 2u * 9u);  // embed, norm, head, layers
  for (const auto& [name, shape] : shapes) {
    const at::Tensor& p = a.parameters().at(name);
    EXPECT_EQ(p.sizes().vec(), shape) << name;
    EXPECT_TRUE(BitEqual(p, b.parameters().at(name))) << name;
    EXPECT_TRUE(BitEqual(p, d.parameters().at(name).to(at::kFloat))) << name;
    if (absl::EndsWith(name, "norm.weight")) {
      EXPECT_TRUE(at::equal(p, at::ones_like(p))) << name;
    } else {
      EXPECT_FALSE(at::equal(p, c.parameters().at(name))) << name;
    }
  }
  const at::Tensor& q = a.parameters().at("model.layers.0.mlp.up_proj.weight");
  EXPECT_NEAR(q.std().item<double>(), 0.02, 0.004);
  EXPECT_NEAR(q.mean().item<double>(), 0.0, 0.004);

  EXPECT_EQ(LlamaModel::Init(config, 1, at::kInt, at::kCPU).status().code(),
            absl::StatusCode::kInvalidArgument);
  LlamaConfig bad = config;
  bad.num_key_value_heads = 3;
  EXPECT_EQ(LlamaModel::Init(bad, 1, at::kFloat, at::kCPU).status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST(LlamaModelTest, TokenChecks) {
  const LlamaModel model = InitOrDie(GqaConfig(), at::kFloat);
  EXPECT_TRUE(model.CheckTokens(at::zeros({1, 3}, at::kLong)).ok());
  EXPECT_TRUE(model.CheckTokens(at::full({2, 2}, 10, at::kInt)).ok());
  for (const at::Tensor& bad :
       {at::zeros({3}, at::kLong), at::zeros({1, 3}, at::kFloat),
        at::zeros({0, 3}, at::kLong), at::full({1, 3}, 11, at::kLong),
        at::full({1, 3}, -1, at::kLong)}) {
    EXPECT_EQ(model.CheckTokens(bad).code(), absl::StatusCode::kInvalidArgument)
        << bad;
  }
  EXPECT_THROW(model.Forward(at::full({1, 3}, 11, at::kLong)), c10::Error);
  EXPECT_THROW(model.Loss(at::zeros({1, 1}, at::kLong)), c10::Error);
  // T = 1 is a valid forward.
  EXPECT_EQ(model.Forward(at::zeros({1, 1}, at::kLong)).sizes(),
            (std::vector<int64_t>{1, 1, 11}));
}

// ---------------------------------------------------------------------------
// Save / Load.

TEST(LlamaCheckpointTest, SaveLoadFloat32IsBitExact) {
  TempDir dir;
  for (const LlamaConfig& config : {GqaConfig(), TiedConfig()}) {
    const LlamaModel model = InitOrDie(config, at::kFloat);
    Randomize(model, 11);
    const std::string out =
        dir.Join(config.tie_word_embeddings ? "tied" : "gqa");
    LlamaSaveOptions options;
    options.dtype = DType::kF32;
    ASSERT_TRUE(model.Save(out, options).ok());

    absl::StatusOr<LlamaConfig> reread = LlamaConfig::Load(out);
    ASSERT_TRUE(reread.ok()) << reread.status();
    EXPECT_TRUE(*reread == config);
    auto ckpt = Checkpoint::Open(out);
    ASSERT_TRUE(ckpt.ok()) << ckpt.status();
    std::set<std::string> names;
    for (const TensorInfo& t : (*ckpt)->tensors()) {
      names.insert(t.name);
      EXPECT_EQ(t.dtype, DType::kF32);
    }
    EXPECT_EQ(names.size(), model.parameters().size());
    EXPECT_EQ(names.count("lm_head.weight"),
              config.tie_word_embeddings ? 0u : 1u);

    absl::StatusOr<LlamaModel> loaded = LlamaModel::Load(**ckpt, *reread);
    ASSERT_TRUE(loaded.ok()) << loaded.status();
    for (const auto& [name, p] : model.parameters()) {
      EXPECT_TRUE(BitEqual(p, loaded->parameters().at(name))) << name;
    }
    at::manual_seed(12);
    const at::Tensor tokens = RandomTokens(2, 6, config.vocab_size);
    EXPECT_TRUE(BitEqual(model.Forward(tokens), loaded->Forward(tokens)));

    // The output directory exists now: no silent replacement.
    EXPECT_EQ(model.Save(out, options).code(),
              absl::StatusCode::kAlreadyExists);
    options.overwrite = true;
    EXPECT_TRUE(model.Save(out, options).ok());
  }
  // No staging leftovers.
  auto entries = ListDirectory(dir.path());
  ASSERT_TRUE(entries.ok());
  EXPECT_EQ(*entries, (std::vector<std::string>{"gqa", "tied"}));
}

TEST(LlamaCheckpointTest, SaveBFloat16LoadsTheRoundedModel) {
  TempDir dir;
  const LlamaConfig config = GqaConfig();
  const LlamaModel model = InitOrDie(config, at::kFloat);
  Randomize(model, 13);
  ASSERT_TRUE(model.Save(dir.Join("bf16")).ok());  // default dtype: BF16
  auto ckpt = Checkpoint::Open(dir.Join("bf16"));
  ASSERT_TRUE(ckpt.ok()) << ckpt.status();
  for (const TensorInfo& t : (*ckpt)->tensors()) {
    EXPECT_EQ(t.dtype, DType::kBF16) << t.name;
  }
  auto config_text =
      ReadFileToString(JoinPath(dir.Join("bf16"), "config.json"), 1 << 20);
  ASSERT_TRUE(config_text.ok());
  EXPECT_EQ(Json::parse(*config_text)["torch_dtype"], "bfloat16");

  absl::StatusOr<LlamaModel> loaded = LlamaModel::Load(**ckpt, config);
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  EXPECT_EQ(loaded->dtype(), at::kFloat);
  const LlamaModel rounded = InitOrDie(config, at::kFloat);
  {
    at::NoGradGuard no_grad;
    for (const auto& [name, p] : rounded.NamedParameters()) {
      p.copy_(model.parameters().at(name).to(at::kBFloat16).to(at::kFloat));
      EXPECT_TRUE(BitEqual(p, loaded->parameters().at(name))) << name;
    }
  }
  at::manual_seed(14);
  const at::Tensor tokens = RandomTokens(2, 5, config.vocab_size);
  const at::Tensor got = loaded->Forward(tokens);
  EXPECT_TRUE(BitEqual(got, rounded.Forward(tokens)));
  EXPECT_GT(MaxAbsDiff(got, model.Forward(tokens)), 0.0);  // it did round

  // Loading as bfloat16 gives the stored values exactly.
  absl::StatusOr<LlamaModel> as_bf16 =
      LlamaModel::Load(**ckpt, config, at::kCPU, at::kBFloat16);
  ASSERT_TRUE(as_bf16.ok()) << as_bf16.status();
  EXPECT_TRUE(
      BitEqual(as_bf16->parameters().at("lm_head.weight").to(at::kFloat),
               rounded.parameters().at("lm_head.weight")));
}

class LlamaLoadErrorTest : public ::testing::Test {
 protected:
  LlamaLoadErrorTest() : model_(InitOrDie(GqaConfig(), at::kFloat)) {
    for (const auto& [name, p] : model_.parameters()) {
      tensors_[name] = p.clone();
    }
  }

  absl::Status LoadStatus(const LlamaConfig& config) {
    std::vector<RawTensor> raw;
    for (const auto& [name, t] : tensors_) raw.push_back(ToRaw(name, t));
    const std::string path =
        dir_.Join(absl::StrCat("m", ++count_, ".safetensors"));
    WriteFileOrDie(path, SerializeSafetensors(raw, {{"format", "pt"}}));
    auto ckpt = Checkpoint::Open(path);
    if (!ckpt.ok()) return ckpt.status();
    return LlamaModel::Load(**ckpt, config).status();
  }

  void ExpectRejected(const std::vector<std::string>& needles,
                      const LlamaConfig& config = GqaConfig()) {
    const absl::Status s = LoadStatus(config);
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
    for (const std::string& needle : needles) {
      EXPECT_TRUE(absl::StrContains(s.message(), needle))
          << "expected '" << needle << "' in " << s;
    }
  }

  TempDir dir_;
  int count_ = 0;
  LlamaModel model_;
  std::map<std::string, at::Tensor> tensors_;
};

TEST_F(LlamaLoadErrorTest, AcceptsTheCompleteSetAndInvFreqBuffers) {
  EXPECT_TRUE(LoadStatus(GqaConfig()).ok());
  tensors_["model.layers.0.self_attn.rotary_emb.inv_freq"] = at::ones({2});
  tensors_["model.rotary_emb.inv_freq"] = at::ones({2});
  EXPECT_TRUE(LoadStatus(GqaConfig()).ok());
  // F16 and F64 storage are converted.
  tensors_["model.norm.weight"] = tensors_["model.norm.weight"].to(at::kHalf);
  tensors_["lm_head.weight"] = tensors_["lm_head.weight"].to(at::kDouble);
  EXPECT_TRUE(LoadStatus(GqaConfig()).ok());
}

TEST_F(LlamaLoadErrorTest, MissingTensor) {
  tensors_.erase("model.layers.1.mlp.down_proj.weight");
  ExpectRejected({"model.layers.1.mlp.down_proj.weight", "missing"});
}

TEST_F(LlamaLoadErrorTest, WrongShape) {
  tensors_["model.layers.0.self_attn.k_proj.weight"] = at::zeros({16, 16});
  ExpectRejected({"model.layers.0.self_attn.k_proj.weight", "shape"});
}

TEST_F(LlamaLoadErrorTest, NonFloatingTensor) {
  tensors_["model.norm.weight"] = at::ones({16}, at::kInt);
  ExpectRejected({"model.norm.weight", "I32", "floating"});
}

TEST_F(LlamaLoadErrorTest, ExtraTensor) {
  tensors_["model.layers.0.self_attn.q_proj.bias"] = at::zeros({16});
  ExpectRejected({"model.layers.0.self_attn.q_proj.bias", "does not use"});
}

TEST_F(LlamaLoadErrorTest, TooFewLayersInConfigMeansExtras) {
  LlamaConfig one_layer = GqaConfig();
  one_layer.num_hidden_layers = 1;
  ExpectRejected({"model.layers.1."}, one_layer);
}

TEST_F(LlamaLoadErrorTest, TiedHeadMustEqualTheEmbedding) {
  LlamaConfig tied = GqaConfig();
  tied.tie_word_embeddings = true;
  tensors_["lm_head.weight"] = tensors_["model.embed_tokens.weight"].clone();
  EXPECT_TRUE(LoadStatus(tied).ok());
  tensors_["lm_head.weight"] = tensors_["lm_head.weight"] + 1;
  ExpectRejected({"lm_head.weight", "tie_word_embeddings"}, tied);
}

// ---------------------------------------------------------------------------
// Config.

Json ValidConfigJson() {
  return Json::parse(R"({
    "architectures": ["LlamaForCausalLM"], "model_type": "llama",
    "hidden_size": 16, "intermediate_size": 24, "num_hidden_layers": 2,
    "num_attention_heads": 4, "num_key_value_heads": 2,
    "rms_norm_eps": 1e-05, "rope_theta": 500.0, "vocab_size": 11,
    "max_position_embeddings": 64, "tie_word_embeddings": false,
    "hidden_act": "silu", "attention_bias": false, "mlp_bias": false,
    "pretraining_tp": 1, "rope_scaling": null, "torch_dtype": "bfloat16",
    "bos_token_id": 1, "eos_token_id": 2, "use_cache": true
  })");
}

TEST(LlamaConfigTest, ParsesHfConfigAndRoundTrips) {
  absl::StatusOr<LlamaConfig> c = LlamaConfig::FromJson(ValidConfigJson(), "x");
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_TRUE(*c == GqaConfig());
  EXPECT_EQ(c->head_dim(), 4);
  absl::StatusOr<LlamaConfig> again = LlamaConfig::FromJson(c->ToJson(), "y");
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_TRUE(*again == *c);
}

TEST(LlamaConfigTest, Defaults) {
  Json j = ValidConfigJson();
  for (const char* key :
       {"num_key_value_heads", "rms_norm_eps", "rope_theta",
        "tie_word_embeddings", "max_position_embeddings", "hidden_act",
        "attention_bias", "mlp_bias", "pretraining_tp", "rope_scaling"}) {
    j.erase(key);
  }
  j.erase("model_type");  // architectures names LlamaForCausalLM
  absl::StatusOr<LlamaConfig> c = LlamaConfig::FromJson(j, "x");
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->num_key_value_heads, 4);
  EXPECT_EQ(c->rms_norm_eps, 1e-6);
  EXPECT_EQ(c->rope_theta, 10000.0);
  EXPECT_FALSE(c->tie_word_embeddings);
  EXPECT_FALSE(c->max_position_embeddings.has_value());
}

TEST(LlamaConfigTest, AcceptsNeutralSettings) {
  const std::vector<std::pair<std::string, Json>> cases = {
      {"head_dim", 4},
      {"head_dim", nullptr},
      {"rope_scaling", Json::parse(R"({"rope_type": "default"})")},
      {"rope_parameters",
       Json::parse(R"({"rope_type": "default", "rope_theta": 500.0})")},
      {"pretraining_tp", 1},
  };
  for (const auto& [key, value] : cases) {
    Json j = ValidConfigJson();
    j[key] = value;
    absl::StatusOr<LlamaConfig> c = LlamaConfig::FromJson(j, "x");
    EXPECT_TRUE(c.ok()) << key << "=" << value.dump() << ": " << c.status();
  }
}

TEST(LlamaConfigTest, RefusesUnsupportedOrInvalidFields) {
  struct Case {
    std::string key;
    Json value;  // null with erase = true removes the key
    bool erase;
    std::string field;  // the field the message must name
  };
  const std::vector<Case> cases = {
      {"model_type", "mistral", false, "model_type"},
      {"hidden_size", 0, false, "hidden_size"},
      {"hidden_size", -16, false, "hidden_size"},
      {"hidden_size", "16", false, "hidden_size"},
      {"hidden_size", 16.5, false, "hidden_size"},
      {"hidden_size", 18, false, "hidden_size"},  // not divisible by 4 heads
      {"vocab_size", nullptr, true, "vocab_size"},
      {"intermediate_size", 0, false, "intermediate_size"},
      {"num_hidden_layers", 0, false, "num_hidden_layers"},
      {"num_key_value_heads", 3, false, "num_attention_heads"},
      {"num_key_value_heads", 0, false, "num_key_value_heads"},
      {"rms_norm_eps", -1.0, false, "rms_norm_eps"},
      {"rope_theta", 0, false, "rope_theta"},
      {"tie_word_embeddings", 1, false, "tie_word_embeddings"},
      {"rope_scaling", Json::parse(R"({"type": "linear", "factor": 2.0})"),
       false, "rope_scaling"},
      {"rope_scaling", Json::parse(R"({"rope_type": "llama3", "factor": 8.0})"),
       false, "rope_scaling"},
      {"rope_parameters",
       Json::parse(R"({"rope_type": "yarn", "rope_theta": 500.0})"), false,
       "rope_parameters"},
      {"rope_parameters",
       Json::parse(R"({"rope_type": "default", "rope_theta": 7.0})"), false,
       "rope_parameters"},
      {"attention_bias", true, false, "attention_bias"},
      {"mlp_bias", true, false, "mlp_bias"},
      {"hidden_act", "gelu", false, "hidden_act"},
      {"pretraining_tp", 2, false, "pretraining_tp"},
      {"head_dim", 8, false, "head_dim"},
      {"max_position_embeddings", 0, false, "max_position_embeddings"},
  };
  for (const Case& c : cases) {
    Json j = ValidConfigJson();
    if (c.erase) {
      j.erase(c.key);
    } else {
      j[c.key] = c.value;
    }
    absl::StatusOr<LlamaConfig> got = LlamaConfig::FromJson(j, "cfg.json");
    ASSERT_FALSE(got.ok()) << c.key << "=" << c.value.dump();
    EXPECT_EQ(got.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_TRUE(absl::StrContains(got.status().message(), "cfg.json"))
        << got.status();
    EXPECT_TRUE(absl::StrContains(got.status().message(),
                                  absl::StrCat("'", c.field, "'")))
        << c.key << "=" << c.value.dump() << ": " << got.status();
  }

  Json no_type = ValidConfigJson();
  no_type.erase("model_type");
  no_type["architectures"] = Json::array({"MistralForCausalLM"});
  EXPECT_FALSE(LlamaConfig::FromJson(no_type, "x").ok());
  EXPECT_FALSE(LlamaConfig::FromJson(Json::array(), "x").ok());
  Json odd_head = ValidConfigJson();
  odd_head["hidden_size"] = 12;  // head_dim 3: RoPE needs pairs
  EXPECT_FALSE(LlamaConfig::FromJson(odd_head, "x").ok());
}

TEST(LlamaConfigTest, LoadReadsFilesStrictly) {
  TempDir dir;
  WriteFileOrDie(dir.Join("config.json"), ValidConfigJson().dump());
  absl::StatusOr<LlamaConfig> from_dir = LlamaConfig::Load(dir.path());
  ASSERT_TRUE(from_dir.ok()) << from_dir.status();
  EXPECT_TRUE(*from_dir == GqaConfig());
  WriteFileOrDie(dir.Join("dup.json"),
                 R"({"model_type": "llama", "hidden_size": 16,
                     "hidden_size": 32})");
  absl::Status dup = LlamaConfig::Load(dir.Join("dup.json")).status();
  EXPECT_EQ(dup.code(), absl::StatusCode::kInvalidArgument) << dup;
  EXPECT_EQ(LlamaConfig::Load(dir.Join("absent.json")).status().code(),
            absl::StatusCode::kNotFound);
}

// ---------------------------------------------------------------------------
// Calibration.

// Records every reported input (cloned), in order.
class CaptureHooks : public ForwardHooks {
 public:
  void OnLinearInput(const std::string& weight_name,
                     const at::Tensor& input) override {
    inputs[weight_name].push_back(input.detach().clone());
  }
  std::map<std::string, std::vector<at::Tensor>> inputs;
};

class TeeHooks : public ForwardHooks {
 public:
  TeeHooks(ForwardHooks* a, ForwardHooks* b) : a_(a), b_(b) {}
  void OnLinearInput(const std::string& weight_name,
                     const at::Tensor& input) override {
    a_->OnLinearInput(weight_name, input);
    b_->OnLinearInput(weight_name, input);
  }

 private:
  ForwardHooks* a_;
  ForwardHooks* b_;
};

bool IsLinearWeight(const std::string& name) {
  return absl::EndsWith(name, "_proj.weight") || name == "lm_head.weight";
}

TEST(HessianCollectorTest, KeysAndAliases) {
  EXPECT_EQ(HessianCollector::KeyFor("model.layers.3.mlp.down_proj.weight"),
            "model.layers.3.mlp.down_proj.hessian");
  EXPECT_EQ(HessianCollector::KeyFor("model.layers.3.self_attn.k_proj.weight"),
            "model.layers.3.self_attn.q_proj.hessian");
  EXPECT_EQ(HessianCollector::KeyFor("model.layers.3.self_attn.v_proj.weight"),
            "model.layers.3.self_attn.q_proj.hessian");
  EXPECT_EQ(HessianCollector::KeyFor("model.layers.3.mlp.gate_proj.weight"),
            "model.layers.3.mlp.up_proj.hessian");
  EXPECT_EQ(HessianCollector::KeyFor("lm_head.weight"), "lm_head.hessian");
  EXPECT_FALSE(HessianCollector::KeyFor("lm_head.bias").has_value());
}

TEST(HessianCollectorTest, MatchesDirectGramOfCapturedInputs) {
  const LlamaConfig config = GqaConfig();
  const LlamaModel model = InitOrDie(config, at::kFloat);
  Randomize(model, 21);
  HessianCollector collector;
  CaptureHooks capture;
  TeeHooks tee(&collector, &capture);
  at::manual_seed(22);
  const std::vector<at::Tensor> batches = {RandomTokens(2, 5, 11),
                                           RandomTokens(3, 4, 11)};
  {
    at::NoGradGuard no_grad;
    for (const at::Tensor& tokens : batches) (void)model.Forward(tokens, &tee);
  }
  ASSERT_TRUE(collector.status().ok()) << collector.status();
  const int64_t n = 2 * 5 + 3 * 4;
  EXPECT_EQ(collector.nsamples(), n);

  // Every linear is reported once per pass; shared inputs are one tensor.
  std::set<std::string> reported;
  for (const auto& [name, list] : capture.inputs) {
    reported.insert(name);
    EXPECT_EQ(list.size(), batches.size()) << name;
  }
  std::set<std::string> linears;
  for (const auto& [name, p] : model.parameters()) {
    if (IsLinearWeight(name)) linears.insert(name);
  }
  EXPECT_EQ(reported, linears);
  for (int l = 0; l < config.num_hidden_layers; ++l) {
    const std::string p = absl::StrCat("model.layers.", l, ".");
    for (size_t i = 0; i < batches.size(); ++i) {
      const at::Tensor& q = capture.inputs[p + "self_attn.q_proj.weight"][i];
      EXPECT_TRUE(
          BitEqual(q, capture.inputs[p + "self_attn.k_proj.weight"][i]));
      EXPECT_TRUE(
          BitEqual(q, capture.inputs[p + "self_attn.v_proj.weight"][i]));
      EXPECT_TRUE(BitEqual(capture.inputs[p + "mlp.up_proj.weight"][i],
                           capture.inputs[p + "mlp.gate_proj.weight"][i]));
    }
  }

  // H = (2/n) X^T X from the captured inputs, in float64.
  double worst = 0;
  size_t keys = 0;
  for (const std::string& name : linears) {
    const std::string key = *HessianCollector::KeyFor(name);
    const std::string own = key.substr(0, key.size() - 8) + ".weight";
    if (own != name) continue;  // an alias
    ++keys;
    std::vector<at::Tensor> rows;
    for (const at::Tensor& x : capture.inputs[name]) {
      rows.push_back(x.reshape({-1, x.size(-1)}).to(at::kDouble));
    }
    const at::Tensor x = at::cat(rows, 0);
    ASSERT_EQ(x.size(0), n);
    const at::Tensor expected = x.t().mm(x) * (2.0 / n);
    absl::StatusOr<at::Tensor> h = collector.Hessian(key);
    ASSERT_TRUE(h.ok()) << h.status();
    EXPECT_EQ(h->scalar_type(), at::kFloat);
    EXPECT_TRUE(BitEqual(*h, h->t().contiguous())) << key;  // symmetric
    const double rel =
        MaxAbsDiff(*h, expected) / expected.abs().max().item<double>();
    EXPECT_LT(rel, 1e-5) << key;
    worst = std::max(worst, rel);
  }
  EXPECT_EQ(keys, 4u * config.num_hidden_layers + 1);  // q, o, up, down; head
  std::cout << "max relative |H - (2/n) X^T X| = " << worst << "\n";

  std::map<std::string, std::string> expected_aliases;
  for (int l = 0; l < config.num_hidden_layers; ++l) {
    const std::string p = absl::StrCat("model.layers.", l, ".");
    expected_aliases[p + "self_attn.k_proj.weight"] =
        p + "self_attn.q_proj.hessian";
    expected_aliases[p + "self_attn.v_proj.weight"] =
        p + "self_attn.q_proj.hessian";
    expected_aliases[p + "mlp.gate_proj.weight"] = p + "mlp.up_proj.hessian";
  }
  EXPECT_EQ(collector.aliases(), expected_aliases);
  EXPECT_EQ(collector.Hessian("model.layers.0.self_attn.k_proj.hessian")
                .status()
                .code(),
            absl::StatusCode::kNotFound);

  // Calibrate() (no autograd, token checks) accumulates the same sums.
  HessianCollector again;
  for (const at::Tensor& tokens : batches) {
    ASSERT_TRUE(again.Calibrate(model, tokens).ok());
  }
  EXPECT_EQ(again.nsamples(), n);
  for (const std::string& name : linears) {
    const std::string key = *HessianCollector::KeyFor(name);
    EXPECT_TRUE(BitEqual(*again.Hessian(key), *collector.Hessian(key))) << key;
  }
  EXPECT_EQ(again.Calibrate(model, at::full({1, 2}, 99, at::kLong)).code(),
            absl::StatusCode::kInvalidArgument);
}

TEST(HessianCollectorTest, WritesACalibrationFileTheFusionReaderAccepts) {
  TempDir dir;
  for (const LlamaConfig& config : {GqaConfig(), TiedConfig()}) {
    const LlamaModel model = InitOrDie(config, at::kFloat);
    Randomize(model, 31);
    HessianCollector collector;
    at::manual_seed(32);
    ASSERT_TRUE(
        collector.Calibrate(model, RandomTokens(2, 6, config.vocab_size)).ok());
    ASSERT_TRUE(
        collector.Calibrate(model, RandomTokens(1, 3, config.vocab_size)).ok());
    const std::string path = dir.Join(
        config.tie_word_embeddings ? "tied.safetensors" : "gqa.safetensors");
    ASSERT_TRUE(collector.Write(path).ok());
    EXPECT_EQ(collector.Write(path).code(), absl::StatusCode::kAlreadyExists);

    auto calib = CalibrationFile::Open(path, {});
    ASSERT_TRUE(calib.ok()) << calib.status();
    EXPECT_EQ((*calib)->nsamples(), 15);
    EXPECT_EQ((*calib)->aliases(), collector.aliases());
    for (const auto& [name, p] : model.parameters()) {
      const std::optional<std::string> key = (*calib)->KeyFor(name);
      if (!IsLinearWeight(name)) {
        EXPECT_FALSE(key.has_value()) << name;
        continue;
      }
      ASSERT_TRUE(key.has_value()) << name;
      EXPECT_EQ(*key, *HessianCollector::KeyFor(name));
      absl::StatusOr<at::Tensor> h = (*calib)->Load(*key);
      ASSERT_TRUE(h.ok()) << h.status();
      EXPECT_EQ(h->size(0), p.size(1)) << name;  // c = the weight's columns
      EXPECT_TRUE(BitEqual(*h, *collector.Hessian(*key))) << name;
    }
  }
  // Only the two files: the staging directories are gone.
  auto entries = ListDirectory(dir.path());
  ASSERT_TRUE(entries.ok());
  EXPECT_EQ(*entries,
            (std::vector<std::string>{"gqa.safetensors", "tied.safetensors"}));

  HessianCollector empty;
  EXPECT_EQ(empty.Write(dir.Join("empty.safetensors")).code(),
            absl::StatusCode::kFailedPrecondition);
}

TEST(HessianCollectorTest, StickyErrors) {
  HessianCollector collector;
  collector.OnLinearInput("x.bias", at::zeros({1, 2, 3}));
  EXPECT_EQ(collector.status().code(), absl::StatusCode::kInvalidArgument);
  TempDir dir;
  EXPECT_EQ(collector.Write(dir.Join("h.safetensors")).code(),
            absl::StatusCode::kInvalidArgument);

  HessianCollector widths;
  widths.OnLinearInput("a.weight", at::ones({1, 2, 3}));
  widths.OnLinearInput("a.weight", at::ones({1, 2, 4}));
  EXPECT_EQ(widths.status().code(), absl::StatusCode::kInvalidArgument);

  HessianCollector partial;
  partial.OnLinearInput("a.weight", at::ones({1, 2, 3}));
  partial.OnLinearInput("b.weight", at::ones({1, 1, 3}));
  EXPECT_EQ(partial.Write(dir.Join("p.safetensors")).code(),
            absl::StatusCode::kFailedPrecondition);
}

// ---------------------------------------------------------------------------
// Training: the forward is differentiable end to end.

TEST(LlamaTrainingTest, SgdStepsLowerTheLoss) {
  LlamaConfig config = GqaConfig();
  const LlamaModel model = InitOrDie(config, at::kFloat, 41);
  for (auto& [name, p] : model.NamedParameters()) p.requires_grad_(true);
  const at::Tensor tokens =
      at::tensor({1, 2, 3, 4, 5, 1, 2, 3, 4, 5, 1, 2, 3, 4, 5, 1}, at::kLong)
          .reshape({2, 8});
  const double lr = 0.5;
  double first = 0, last = 0;
  for (int step = 0; step < 30; ++step) {
    const at::Tensor loss = model.Loss(tokens);
    ASSERT_TRUE(loss.requires_grad());
    if (step == 0) first = loss.item<double>();
    last = loss.item<double>();
    loss.backward();
    at::NoGradGuard no_grad;
    for (auto& [name, p] : model.NamedParameters()) {
      ASSERT_TRUE(p.grad().defined()) << name;
      if (step == 0) {
        EXPECT_GT(p.grad().abs().max().item<double>(), 0.0) << name;
      }
      p.sub_(p.grad() * lr);
      p.grad().zero_();
    }
  }
  std::cout << "loss " << first << " -> " << last << "\n";
  EXPECT_NEAR(first, std::log(11.0), 0.05);  // near-uniform at init
  EXPECT_LT(last, 0.5 * first);
}

}  // namespace
}  // namespace tailor
