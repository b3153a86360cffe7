#include "io/lora_adapter.h"

#include <ATen/ATen.h>
#include <gtest/gtest.h>
#include <sys/stat.h>

#include <cmath>
#include <cstring>
#include <map>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "io/checkpoint.h"
#include "storage/uri_resolver.h"
#include "testing/test_util.h"

namespace tailor {
namespace {

using ::tailor::testing::BitEqual;
using ::tailor::testing::RawTensor;
using ::tailor::testing::SerializeSafetensors;
using ::tailor::testing::TempDir;
using ::tailor::testing::ToRaw;
using ::tailor::testing::WriteFileOrDie;
using ::tailor::testing::WriteShardedCheckpoint;

constexpr char kQ[] = "model.layers.0.self_attn.q_proj.weight";  // F32 8x6
constexpr char kV[] = "model.layers.0.self_attn.v_proj.weight";  // BF16 4x6
constexpr char kUp[] = "model.layers.0.mlp.up_proj.weight";      // F32 12x6
constexpr char kDown[] = "model.layers.0.mlp.down_proj.weight";  // F64 6x12
constexpr char kConv1D[] = "model.layers.0.attn.c_attn.weight";  // F32 6x9
constexpr char kEmbed[] = "model.embed_tokens.weight";           // BF16 10x6
constexpr char kNorm[] = "model.norm.weight";                    // F32 6
constexpr char kHead[] = "lm_head.weight";                       // BF16 10x6

// "model.layers.0.self_attn.q_proj" -> its PEFT key prefix.
std::string Peft(const std::string& module) {
  return "base_model.model." + module;
}

ReadOptions Keep() {
  ReadOptions keep;
  keep.floating_dtype = std::nullopt;
  return keep;
}

ReadOptions AsDouble() {
  ReadOptions options;
  options.floating_dtype = at::kDouble;
  return options;
}

// The reference merge, in float64, written independently of the code under
// test: W + scaling * B @ A, transposed for fan_in_fan_out and embeddings.
at::Tensor Reference(const at::Tensor& w, const at::Tensor& a,
                     const at::Tensor& b, double scaling, bool transpose) {
  at::Tensor delta = at::matmul(b.to(at::kDouble), a.to(at::kDouble)) * scaling;
  if (transpose) delta = delta.t();
  return w.to(at::kDouble) + delta;
}

void ExpectClose(const at::Tensor& actual, const at::Tensor& expected,
                 double tol = 1e-5) {
  ASSERT_EQ(actual.sizes(), expected.sizes());
  const double diff = (actual.to(at::kDouble) - expected.to(at::kDouble))
                          .abs()
                          .max()
                          .item<double>();
  EXPECT_LE(diff, tol);
}

std::string Bytes(const at::Tensor& t) {
  at::Tensor c = t.contiguous();
  return std::string(static_cast<const char*>(c.data_ptr()),
                     static_cast<size_t>(c.numel()) * c.element_size());
}

void ExpectError(const absl::Status& status, absl::StatusCode code,
                 const std::vector<std::string>& fragments) {
  EXPECT_EQ(status.code(), code) << status;
  for (const std::string& f : fragments) {
    EXPECT_TRUE(absl::StrContains(status.message(), f))
        << "'" << f << "' not in: " << status.message();
  }
}

class LoraAdapterTest : public ::testing::Test {
 protected:
  void SetUp() override {
    at::manual_seed(1234);
    base_tensors_ = {
        {kQ, at::randn({8, 6})},
        {kV, at::randn({4, 6}).to(at::kBFloat16)},
        {kUp, at::randn({12, 6})},
        {kDown, at::randn({6, 12}, at::kDouble)},
        {kConv1D, at::randn({6, 9})},
        {kEmbed, at::randn({10, 6}).to(at::kBFloat16)},
        {kNorm, at::randn({6})},
        {kHead, at::randn({10, 6}).to(at::kBFloat16)},
    };
    std::vector<RawTensor> shard1, shard2;
    for (const auto& [name, t] : base_tensors_) {
      (absl::StrContains(name, "layers") ? shard1 : shard2)
          .push_back(ToRaw(name, t));
    }
    base_dir_ = dir_.Join("base");
    ASSERT_EQ(::mkdir(base_dir_.c_str(), 0755), 0);
    WriteShardedCheckpoint(base_dir_, {shard1, shard2});
    auto base = Checkpoint::Open(base_dir_);
    ASSERT_TRUE(base.ok()) << base.status();
    base_ = *std::move(base);
  }

  // Writes an adapter directory and returns its path.
  std::string WriteAdapter(const std::string& name, const std::string& config,
                           const std::vector<RawTensor>& tensors) {
    const std::string path = dir_.Join(name);
    ::mkdir(path.c_str(), 0755);
    WriteFileOrDie(path + "/adapter_config.json", config);
    WriteFileOrDie(path + "/adapter_model.safetensors",
                   SerializeSafetensors(tensors));
    return path;
  }

  absl::StatusOr<std::unique_ptr<LoraFineTuned>> Open(const std::string& dir) {
    return LoraFineTuned::Create(base_.get(), dir, Checkpoint::Options());
  }

  // Every tensor not in `changed` reads bit-identically to the base.
  void ExpectUntouchedExcept(const TensorSource& ft,
                             const std::vector<std::string>& changed) {
    for (const TensorInfo& t : base_->tensors()) {
      if (std::find(changed.begin(), changed.end(), t.name) != changed.end()) {
        continue;
      }
      auto got = ft.Read(t.name, Keep());
      auto want = base_->Read(t.name, Keep());
      ASSERT_TRUE(got.ok()) << got.status();
      EXPECT_TRUE(BitEqual(*got, *want)) << t.name;
      auto raw = ft.ReadRaw(t.name);
      ASSERT_TRUE(raw.ok()) << raw.status();
      EXPECT_EQ(*raw, *base_->ReadRaw(t.name)) << t.name;
    }
  }

  TempDir dir_;
  std::string base_dir_;
  std::map<std::string, at::Tensor> base_tensors_;
  std::unique_ptr<Checkpoint> base_;
};

constexpr char kBasicConfig[] = R"({
  "peft_type": "LORA", "task_type": "CAUSAL_LM", "r": 2, "lora_alpha": 8,
  "lora_dropout": 0.05, "bias": "none", "fan_in_fan_out": false,
  "target_modules": ["q_proj", "v_proj"], "modules_to_save": null,
  "use_rslora": false, "use_dora": false, "init_lora_weights": true,
  "layer_replication": null, "rank_pattern": {}, "alpha_pattern": {},
  "base_model_name_or_path": "tiny", "revision": null,
  "some_future_option": {"anything": [1, 2]}
})";

TEST_F(LoraAdapterTest, StandardLoraMergesAndLeavesTheRestUntouched) {
  at::Tensor qa = at::randn({2, 6}), qb = at::randn({8, 2});
  at::Tensor va = at::randn({2, 6}), vb = at::randn({4, 2});
  const std::string dir = WriteAdapter(
      "std", kBasicConfig,
      {ToRaw(Peft("model.layers.0.self_attn.q_proj.lora_A.weight"), qa),
       ToRaw(Peft("model.layers.0.self_attn.q_proj.lora_B.weight"), qb),
       ToRaw(Peft("model.layers.0.self_attn.v_proj.lora_A.weight"), va),
       ToRaw(Peft("model.layers.0.self_attn.v_proj.lora_B.weight"), vb)});
  EXPECT_TRUE(IsLoraAdapterDir(dir));
  auto ft = Open(dir);
  ASSERT_TRUE(ft.ok()) << ft.status();
  const LoraFineTuned& lora = **ft;

  EXPECT_EQ(lora.config().r, 2);
  EXPECT_EQ(lora.config().lora_alpha, 8);
  EXPECT_EQ(lora.config().target_modules,
            (std::vector<std::string>{"q_proj", "v_proj"}));
  ASSERT_EQ(lora.modules().size(), 2u);
  EXPECT_EQ(lora.modules()[0].base_tensor, kQ);
  EXPECT_EQ(lora.modules()[1].base_tensor, kV);
  for (const LoraModule& m : lora.modules()) {
    EXPECT_EQ(m.rank, 2);
    EXPECT_DOUBLE_EQ(m.scaling, 4.0);
    EXPECT_FALSE(m.embedding);
  }
  EXPECT_EQ(lora.modules()[0].a_key,
            Peft("model.layers.0.self_attn.q_proj.lora_A.weight"));
  EXPECT_TRUE(lora.replaced().empty());
  EXPECT_EQ(lora.description(), dir + " over " + base_dir_);

  // Exactly the base's tensor list.
  ASSERT_EQ(lora.tensors().size(), base_->tensors().size());
  for (size_t i = 0; i < lora.tensors().size(); ++i) {
    EXPECT_EQ(lora.tensors()[i].name, base_->tensors()[i].name);
    EXPECT_EQ(lora.tensors()[i].dtype, base_->tensors()[i].dtype);
    EXPECT_EQ(lora.tensors()[i].shape, base_->tensors()[i].shape);
  }

  auto q = lora.Read(kQ);
  ASSERT_TRUE(q.ok()) << q.status();
  EXPECT_EQ(q->scalar_type(), at::kFloat);
  ExpectClose(*q, Reference(base_tensors_[kQ], qa, qb, 4.0, false));
  auto v = lora.Read(kV);
  ASSERT_TRUE(v.ok()) << v.status();
  ExpectClose(*v, Reference(base_tensors_[kV], va, vb, 4.0, false));

  ExpectUntouchedExcept(lora, {kQ, kV});
  EXPECT_EQ(lora.Read("no.such.tensor").status().code(),
            absl::StatusCode::kNotFound);
  EXPECT_EQ(lora.ReadRaw("no.such.tensor").status().code(),
            absl::StatusCode::kNotFound);
}

TEST_F(LoraAdapterTest, AcceptsTheAdapterNameInfix) {
  at::Tensor qa = at::randn({2, 6}), qb = at::randn({8, 2});
  at::Tensor ea = at::randn({2, 10}), eb = at::randn({6, 2});
  const std::string dir = WriteAdapter(
      "infix", kBasicConfig,
      {ToRaw(Peft("model.layers.0.self_attn.q_proj.lora_A.default.weight"), qa),
       ToRaw(Peft("model.layers.0.self_attn.q_proj.lora_B.default.weight"), qb),
       ToRaw(Peft("model.embed_tokens.lora_embedding_A.default"), ea),
       ToRaw(Peft("model.embed_tokens.lora_embedding_B.default"), eb)});
  auto ft = Open(dir);
  ASSERT_TRUE(ft.ok()) << ft.status();
  ExpectClose(*(*ft)->Read(kQ),
              Reference(base_tensors_[kQ], qa, qb, 4.0, false));
  ExpectClose(*(*ft)->Read(kEmbed),
              Reference(base_tensors_[kEmbed], ea, eb, 4.0, true));
  ExpectUntouchedExcept(**ft, {kQ, kEmbed});
}

TEST_F(LoraAdapterTest, FanInFanOutTransposesTheUpdate) {
  // A Conv1D weight is stored [in, out] = [6, 9]; A is [r, in], B [out, r].
  at::Tensor a = at::randn({2, 6}), b = at::randn({9, 2});
  const std::string dir = WriteAdapter(
      "fifo",
      R"({"peft_type": "LORA", "r": 2, "lora_alpha": 3,
          "fan_in_fan_out": true, "target_modules": ["c_attn"]})",
      {ToRaw(Peft("model.layers.0.attn.c_attn.lora_A.weight"), a),
       ToRaw(Peft("model.layers.0.attn.c_attn.lora_B.weight"), b)});
  auto ft = Open(dir);
  ASSERT_TRUE(ft.ok()) << ft.status();
  EXPECT_TRUE((*ft)->config().fan_in_fan_out);
  auto w = (*ft)->Read(kConv1D);
  ASSERT_TRUE(w.ok()) << w.status();
  ExpectClose(*w, Reference(base_tensors_[kConv1D], a, b, 1.5, true));
  ExpectUntouchedExcept(**ft, {kConv1D});

  // Without fan_in_fan_out the same factors do not fit the [6, 9] weight.
  const std::string wrong = WriteAdapter(
      "fifo-missing", R"({"peft_type": "LORA", "r": 2, "lora_alpha": 3})",
      {ToRaw(Peft("model.layers.0.attn.c_attn.lora_A.weight"), a),
       ToRaw(Peft("model.layers.0.attn.c_attn.lora_B.weight"), b)});
  ExpectError(Open(wrong).status(), absl::StatusCode::kInvalidArgument,
              {"shape mismatch", kConv1D, "[6, 9]"});
}

TEST_F(LoraAdapterTest, RankStabilizedScaling) {
  at::Tensor a = at::randn({4, 6}), b = at::randn({12, 4});
  const std::string dir = WriteAdapter(
      "rslora",
      R"({"peft_type": "LORA", "r": 4, "lora_alpha": 6, "use_rslora": true})",
      {ToRaw(Peft("model.layers.0.mlp.up_proj.lora_A.weight"), a),
       ToRaw(Peft("model.layers.0.mlp.up_proj.lora_B.weight"), b)});
  auto ft = Open(dir);
  ASSERT_TRUE(ft.ok()) << ft.status();
  ASSERT_EQ((*ft)->modules().size(), 1u);
  EXPECT_DOUBLE_EQ((*ft)->modules()[0].scaling, 3.0);  // 6 / sqrt(4)
  ExpectClose(*(*ft)->Read(kUp),
              Reference(base_tensors_[kUp], a, b, 3.0, false));
}

TEST_F(LoraAdapterTest, RankAndAlphaPatternsFollowPeftMatching) {
  // q_proj: two rank_pattern keys match; PEFT takes the first in file order
  // ("self_attn.q_proj": 4), not the first in sorted order ("q_proj": 3).
  // v_proj: "proj" does not match (suffixes are dot-bounded); default r = 2,
  // alpha from the full-name key. up_proj: alpha from a regular expression.
  at::Tensor qa = at::randn({4, 6}), qb = at::randn({8, 4});
  at::Tensor va = at::randn({2, 6}), vb = at::randn({4, 2});
  at::Tensor ua = at::randn({2, 6}), ub = at::randn({12, 2});
  const std::string dir = WriteAdapter(
      "patterns",
      R"({"peft_type": "LORA", "r": 2, "lora_alpha": 4,
          "rank_pattern": {"self_attn.q_proj": 4, "q_proj": 3, "proj": 7},
          "alpha_pattern": {"model.layers.0.self_attn.v_proj": 16,
                            "mlp\\.up_.*": 6}})",
      {ToRaw(Peft("model.layers.0.self_attn.q_proj.lora_A.weight"), qa),
       ToRaw(Peft("model.layers.0.self_attn.q_proj.lora_B.weight"), qb),
       ToRaw(Peft("model.layers.0.self_attn.v_proj.lora_A.weight"), va),
       ToRaw(Peft("model.layers.0.self_attn.v_proj.lora_B.weight"), vb),
       ToRaw(Peft("model.layers.0.mlp.up_proj.lora_A.weight"), ua),
       ToRaw(Peft("model.layers.0.mlp.up_proj.lora_B.weight"), ub)});
  auto ft = Open(dir);
  ASSERT_TRUE(ft.ok()) << ft.status();
  const LoraFineTuned& lora = **ft;
  EXPECT_EQ(lora.config().rank_pattern.at("self_attn.q_proj"), 4);
  EXPECT_EQ(lora.config().alpha_pattern.at("mlp\\.up_.*"), 6);
  std::map<std::string, const LoraModule*> by_name;
  for (const LoraModule& m : lora.modules()) by_name[m.base_tensor] = &m;
  ASSERT_EQ(by_name.size(), 3u);
  EXPECT_EQ(by_name[kQ]->rank, 4);
  EXPECT_DOUBLE_EQ(by_name[kQ]->scaling, 1.0);  // 4 / 4
  EXPECT_EQ(by_name[kV]->rank, 2);
  EXPECT_DOUBLE_EQ(by_name[kV]->scaling, 8.0);  // 16 / 2
  EXPECT_EQ(by_name[kUp]->rank, 2);
  EXPECT_DOUBLE_EQ(by_name[kUp]->scaling, 3.0);  // 6 / 2
  ExpectClose(*lora.Read(kQ), Reference(base_tensors_[kQ], qa, qb, 1.0, false));
  ExpectClose(*lora.Read(kV), Reference(base_tensors_[kV], va, vb, 8.0, false));
  ExpectClose(*lora.Read(kUp),
              Reference(base_tensors_[kUp], ua, ub, 3.0, false));

  // The pattern rank is enforced: q_proj factors of rank 3 do not fit r = 4.
  const std::string bad =
      WriteAdapter("patterns-bad",
                   R"({"peft_type": "LORA", "r": 3, "lora_alpha": 4,
          "rank_pattern": {"q_proj": 4}})",
                   {ToRaw(Peft("model.layers.0.self_attn.q_proj.lora_A.weight"),
                          at::randn({3, 6})),
                    ToRaw(Peft("model.layers.0.self_attn.q_proj.lora_B.weight"),
                          at::randn({8, 3}))});
  ExpectError(Open(bad).status(), absl::StatusCode::kInvalidArgument,
              {"rank mismatch", "rank_pattern['q_proj'] = 4"});
}

// Issue #10: pattern keys are attacker-written. They are RE2 (linear-time
// matching, bounded compilation) with Python re.fullmatch semantics; what
// RE2 cannot compile is refused naming the key.
TEST_F(LoraAdapterTest, PatternKeysAreBoundedRe2) {
  at::Tensor qa = at::randn({4, 6}), qb = at::randn({8, 4});
  const std::vector<testing::RawTensor> q = {
      ToRaw(Peft("model.layers.0.self_attn.q_proj.lora_A.weight"), qa),
      ToRaw(Peft("model.layers.0.self_attn.q_proj.lora_B.weight"), qb)};
  // Exponential for a backtracking engine; RE2 answers at once. The first
  // key does not match (there is no 'X'); the second does.
  const std::string dir =
      WriteAdapter("re2-ok",
                   R"({"peft_type": "LORA", "r": 2, "lora_alpha": 4,
          "rank_pattern": {"(.|.)*X": 3, "(s|e|l|f|_|a|t|n|\\.)*q_proj": 4}})",
                   q);
  auto ft = Open(dir);
  ASSERT_TRUE(ft.ok()) << ft.status();
  ASSERT_EQ((*ft)->modules().size(), 1u);
  EXPECT_EQ((*ft)->modules()[0].rank, 4);
  // Backreferences and lookaround are not RE2; neither is an overlong key.
  for (const std::string& key :
       {std::string("(q)\\\\1_proj"), std::string("q(?=_proj)"),
        std::string(2000, 'q')}) {
    SCOPED_TRACE(key.substr(0, 40));
    const std::string bad = WriteAdapter(
        "re2-bad",
        absl::StrCat(R"({"peft_type": "LORA", "r": 2, "lora_alpha": 4,
                       "rank_pattern": {")",
                     key, R"(": 4}})"),
        q);
    absl::Status s = Open(bad).status();
    ExpectError(s, absl::StatusCode::kInvalidArgument,
                {"rank_pattern[", "RE2"});
    EXPECT_LT(s.message().size(), 1500u);
  }
}

TEST_F(LoraAdapterTest, EmbeddingLora) {
  // PEFT: lora_embedding_A is [r, num_embeddings], lora_embedding_B is
  // [dim, r], and the update is (B @ A)^T. fan_in_fan_out does not apply.
  at::Tensor a = at::randn({2, 10}), b = at::randn({6, 2});
  const std::string dir = WriteAdapter(
      "embedding",
      R"({"peft_type": "LORA", "r": 2, "lora_alpha": 2, "fan_in_fan_out": true,
          "target_modules": ["embed_tokens"]})",
      {ToRaw(Peft("model.embed_tokens.lora_embedding_A"), a),
       ToRaw(Peft("model.embed_tokens.lora_embedding_B"), b)});
  auto ft = Open(dir);
  ASSERT_TRUE(ft.ok()) << ft.status();
  ASSERT_EQ((*ft)->modules().size(), 1u);
  EXPECT_TRUE((*ft)->modules()[0].embedding);
  auto w = (*ft)->Read(kEmbed);
  ASSERT_TRUE(w.ok()) << w.status();
  ExpectClose(*w, Reference(base_tensors_[kEmbed], a, b, 1.0, true));
  ExpectUntouchedExcept(**ft, {kEmbed});

  // The linear orientation (A [r, dim]) is refused, not silently transposed.
  const std::string wrong = WriteAdapter(
      "embedding-wrong", R"({"peft_type": "LORA", "r": 2, "lora_alpha": 2})",
      {ToRaw(Peft("model.embed_tokens.lora_embedding_A"), at::randn({2, 6})),
       ToRaw(Peft("model.embed_tokens.lora_embedding_B"), at::randn({10, 2}))});
  ExpectError(Open(wrong).status(), absl::StatusCode::kInvalidArgument,
              {"shape mismatch", "num_embeddings"});
}

TEST_F(LoraAdapterTest, ModulesToSaveReplaceTheBaseTensor) {
  // PEFT saves a modules_to_save copy as "base_model.model.<module>.weight"
  // (in the training dtype: here F32 over a BF16 base); a raw state_dict has
  // "<module>.modules_to_save.<adapter>.<param>".
  at::Tensor head = at::randn({10, 6});
  at::Tensor norm = at::randn({6});
  at::Tensor qa = at::randn({2, 6}), qb = at::randn({8, 2});
  const std::string dir = WriteAdapter(
      "mts",
      R"({"peft_type": "LORA", "r": 2, "lora_alpha": 8,
          "modules_to_save": ["lm_head", "norm"]})",
      {ToRaw(Peft("lm_head.weight"), head),
       ToRaw(Peft("model.norm.modules_to_save.default.weight"), norm),
       ToRaw(Peft("model.layers.0.self_attn.q_proj.lora_A.weight"), qa),
       ToRaw(Peft("model.layers.0.self_attn.q_proj.lora_B.weight"), qb)});
  auto ft = Open(dir);
  ASSERT_TRUE(ft.ok()) << ft.status();
  const LoraFineTuned& lora = **ft;
  EXPECT_EQ(lora.config().modules_to_save,
            (std::vector<std::string>{"lm_head", "norm"}));
  EXPECT_EQ(lora.replaced(),
            (std::map<std::string, std::string>{
                {kHead, Peft("lm_head.weight")},
                {kNorm, Peft("model.norm.modules_to_save.default.weight")}}));

  // Read as float32: the adapter's values exactly.
  EXPECT_TRUE(BitEqual(*lora.Read(kHead), head));
  EXPECT_TRUE(BitEqual(*lora.Read(kNorm), norm));
  // In the stored type (the base's, BF16) and raw: rounded to BF16.
  const at::Tensor head_bf16 = head.to(at::kBFloat16);
  EXPECT_TRUE(BitEqual(*lora.Read(kHead, Keep()), head_bf16));
  EXPECT_EQ(*lora.ReadRaw(kHead), Bytes(head_bf16));
  EXPECT_EQ(*lora.ReadRaw(kNorm), Bytes(norm));  // same dtype: verbatim
  ExpectClose(*lora.Read(kQ), Reference(base_tensors_[kQ], qa, qb, 4.0, false));
  ExpectUntouchedExcept(lora, {kHead, kNorm, kQ});

  // Shape must match the base tensor.
  const std::string bad_shape =
      WriteAdapter("mts-shape",
                   R"({"peft_type": "LORA", "r": 2, "lora_alpha": 8,
          "modules_to_save": ["lm_head"]})",
                   {ToRaw(Peft("lm_head.weight"), at::randn({11, 6}))});
  ExpectError(Open(bad_shape).status(), absl::StatusCode::kInvalidArgument,
              {Peft("lm_head.weight"), "[11, 6]", "[10, 6]", kHead});
  // A floating base tensor cannot be replaced by an integer one.
  const std::string bad_dtype = WriteAdapter(
      "mts-dtype",
      R"({"peft_type": "LORA", "r": 2, "lora_alpha": 8,
          "modules_to_save": ["lm_head"]})",
      {ToRaw(Peft("lm_head.weight"), at::zeros({10, 6}, at::kInt))});
  ExpectError(Open(bad_dtype).status(), absl::StatusCode::kInvalidArgument,
              {Peft("lm_head.weight"), "I32", "BF16"});
  // A tensor both replaced and LoRA-merged is refused.
  const std::string conflict = WriteAdapter(
      "mts-conflict", R"({"peft_type": "LORA", "r": 2, "lora_alpha": 8})",
      {ToRaw(Peft("model.layers.0.self_attn.q_proj.weight"), at::randn({8, 6})),
       ToRaw(Peft("model.layers.0.self_attn.q_proj.lora_A.weight"), qa),
       ToRaw(Peft("model.layers.0.self_attn.q_proj.lora_B.weight"), qb)});
  ExpectError(Open(conflict).status(), absl::StatusCode::kInvalidArgument,
              {Peft("model.layers.0.self_attn.q_proj.weight"), "also updates"});
}

TEST_F(LoraAdapterTest, ReadRawRoundsTheMergeToTheBaseDtype) {
  at::Tensor va = at::randn({2, 6}), vb = at::randn({4, 2});
  at::Tensor da = at::randn({2, 12}), db = at::randn({6, 2});
  const std::string dir = WriteAdapter(
      "rounding", R"({"peft_type": "LORA", "r": 2, "lora_alpha": 1.5})",
      {ToRaw(Peft("model.layers.0.self_attn.v_proj.lora_A.weight"), va),
       ToRaw(Peft("model.layers.0.self_attn.v_proj.lora_B.weight"), vb),
       ToRaw(Peft("model.layers.0.mlp.down_proj.lora_A.weight"), da),
       ToRaw(Peft("model.layers.0.mlp.down_proj.lora_B.weight"), db)});
  auto ft = Open(dir);
  ASSERT_TRUE(ft.ok()) << ft.status();
  const LoraFineTuned& lora = **ft;

  // BF16 base: merged in float32, rounded once to BF16.
  auto v32 = lora.Read(kV);
  ASSERT_TRUE(v32.ok()) << v32.status();
  ExpectClose(*v32, Reference(base_tensors_[kV], va, vb, 0.75, false));
  const at::Tensor v16 = v32->to(at::kBFloat16);
  auto raw = lora.ReadRaw(kV);
  ASSERT_TRUE(raw.ok()) << raw.status();
  EXPECT_EQ(*raw, Bytes(v16));
  auto kept = lora.Read(kV, Keep());
  ASSERT_TRUE(kept.ok()) << kept.status();
  EXPECT_TRUE(BitEqual(*kept, v16));
  // And that rounding is within half a BF16 ulp of the exact merge.
  const at::Tensor exact = Reference(base_tensors_[kV], va, vb, 0.75, false);
  const double rel =
      ((v16.to(at::kDouble) - exact).abs() / exact.abs().clamp_min(1e-3))
          .max()
          .item<double>();
  EXPECT_LE(rel, std::ldexp(1.0, -8) + 1e-6);

  // F64 base: merged in float64.
  auto d = lora.Read(kDown, AsDouble());
  ASSERT_TRUE(d.ok()) << d.status();
  EXPECT_EQ(d->scalar_type(), at::kDouble);
  ExpectClose(*d, Reference(base_tensors_[kDown], da, db, 0.75, false), 1e-12);
  EXPECT_EQ(*lora.ReadRaw(kDown), Bytes(*d));
}

TEST_F(LoraAdapterTest, ConcurrentReadsAgree) {
  at::Tensor qa = at::randn({2, 6}), qb = at::randn({8, 2});
  const std::string dir = WriteAdapter(
      "threads", kBasicConfig,
      {ToRaw(Peft("model.layers.0.self_attn.q_proj.lora_A.weight"), qa),
       ToRaw(Peft("model.layers.0.self_attn.q_proj.lora_B.weight"), qb)});
  auto ft = Open(dir);
  ASSERT_TRUE(ft.ok()) << ft.status();
  const std::string want = *(*ft)->ReadRaw(kQ);
  std::vector<std::string> got(8);
  std::vector<std::thread> threads;
  for (size_t i = 0; i < got.size(); ++i) {
    threads.emplace_back([&, i] {
      for (int k = 0; k < 20; ++k) got[i] = *(*ft)->ReadRaw(kQ);
    });
  }
  for (std::thread& t : threads) t.join();
  for (const std::string& g : got) EXPECT_EQ(g, want);
}

TEST_F(LoraAdapterTest, MapsTheBaseModelPrefix) {
  // An adapter trained on the bare LlamaModel names "layers.0...", the
  // checkpoint "model.layers.0...": transformers adds the prefix, so do we.
  at::Tensor qa = at::randn({2, 6}), qb = at::randn({8, 2});
  const std::string bare = WriteAdapter(
      "bare", kBasicConfig,
      {ToRaw(Peft("layers.0.self_attn.q_proj.lora_A.weight"), qa),
       ToRaw(Peft("layers.0.self_attn.q_proj.lora_B.weight"), qb)});
  auto ft = Open(bare);
  ASSERT_TRUE(ft.ok()) << ft.status();
  ASSERT_EQ((*ft)->modules().size(), 1u);
  EXPECT_EQ((*ft)->modules()[0].base_tensor, kQ);
  ExpectClose(*(*ft)->Read(kQ),
              Reference(base_tensors_[kQ], qa, qb, 4.0, false));

  // The other direction: a checkpoint without the prefix.
  const std::string bare_base = dir_.Join("bare-base");
  ASSERT_EQ(::mkdir(bare_base.c_str(), 0755), 0);
  WriteFileOrDie(bare_base + "/model.safetensors",
                 SerializeSafetensors({ToRaw("layers.0.self_attn.q_proj.weight",
                                             base_tensors_[kQ])}));
  auto stripped_base = Checkpoint::Open(bare_base);
  ASSERT_TRUE(stripped_base.ok()) << stripped_base.status();
  const std::string full = WriteAdapter(
      "full", kBasicConfig,
      {ToRaw(Peft("model.layers.0.self_attn.q_proj.lora_A.weight"), qa),
       ToRaw(Peft("model.layers.0.self_attn.q_proj.lora_B.weight"), qb)});
  auto ft2 =
      LoraFineTuned::Create(stripped_base->get(), full, Checkpoint::Options());
  ASSERT_TRUE(ft2.ok()) << ft2.status();
  EXPECT_EQ((*ft2)->modules()[0].base_tensor,
            "layers.0.self_attn.q_proj.weight");

  // A mapping is all or nothing: one module that resolves neither way is
  // NOT_FOUND, naming both candidate names.
  const std::string missing = WriteAdapter(
      "missing-module", kBasicConfig,
      {ToRaw(Peft("model.layers.0.self_attn.q_proj.lora_A.weight"), qa),
       ToRaw(Peft("model.layers.0.self_attn.q_proj.lora_B.weight"), qb),
       ToRaw(Peft("model.layers.5.self_attn.q_proj.lora_A.weight"), qa),
       ToRaw(Peft("model.layers.5.self_attn.q_proj.lora_B.weight"), qb)});
  ExpectError(Open(missing).status(), absl::StatusCode::kNotFound,
              {"adapter_model.safetensors",
               Peft("model.layers.5.self_attn.q_proj.lora_A.weight"),
               "'model.layers.5.self_attn.q_proj.weight'",
               "'layers.5.self_attn.q_proj.weight'", base_dir_});
}

TEST_F(LoraAdapterTest, RefusesUnsupportedVariantsInTheConfig) {
  const std::vector<RawTensor> tensors = {
      ToRaw(Peft("model.layers.0.self_attn.q_proj.lora_A.weight"),
            at::randn({2, 6})),
      ToRaw(Peft("model.layers.0.self_attn.q_proj.lora_B.weight"),
            at::randn({8, 2}))};
  struct Case {
    const char* name;
    const char* config;
    const char* field;
  };
  const Case cases[] = {
      {"dora",
       R"({"peft_type": "LORA", "r": 2, "lora_alpha": 8, "use_dora": true})",
       "'use_dora'"},
      {"lora-bias",
       R"({"peft_type": "LORA", "r": 2, "lora_alpha": 8, "lora_bias": true})",
       "'lora_bias'"},
      {"replication",
       R"({"peft_type": "LORA", "r": 2, "lora_alpha": 8,
           "layer_replication": [[0, 1], [0, 1]]})",
       "'layer_replication'"},
      {"pissa",
       R"({"peft_type": "LORA", "r": 2, "lora_alpha": 8,
           "init_lora_weights": "pissa_niter_4"})",
       "'init_lora_weights'"},
      {"ia3", R"({"peft_type": "IA3", "r": 2, "lora_alpha": 8})",
       "'peft_type'"},
      {"no-type", R"({"r": 2, "lora_alpha": 8})", "'peft_type'"},
      {"r-zero", R"({"peft_type": "LORA", "r": 0, "lora_alpha": 8})", "'r'"},
      {"r-float", R"({"peft_type": "LORA", "r": 2.5, "lora_alpha": 8})", "'r'"},
      {"r-string", R"({"peft_type": "LORA", "r": "2", "lora_alpha": 8})",
       "'r'"},
      {"no-alpha", R"({"peft_type": "LORA", "r": 2})", "'lora_alpha'"},
      {"fifo-string",
       R"({"peft_type": "LORA", "r": 2, "lora_alpha": 8, "fan_in_fan_out": "yes"})",
       "'fan_in_fan_out'"},
      {"bad-regex",
       R"({"peft_type": "LORA", "r": 2, "lora_alpha": 8,
           "rank_pattern": {"q_proj(": 4}})",
       "rank_pattern['q_proj(']"},
      {"duplicate", R"({"peft_type": "LORA", "r": 2, "r": 4, "lora_alpha": 8})",
       "duplicate JSON key 'r'"},
      {"array", R"([1, 2])", "JSON object"},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.name);
    const std::string dir = WriteAdapter(c.name, c.config, tensors);
    ExpectError(Open(dir).status(), absl::StatusCode::kInvalidArgument,
                {dir + "/adapter_config.json", c.field});
  }
}

TEST_F(LoraAdapterTest, RefusesUnrecognisedOrInconsistentTensors) {
  const std::string q = "model.layers.0.self_attn.q_proj";
  const RawTensor a = ToRaw(Peft(q + ".lora_A.weight"), at::randn({2, 6}));
  const RawTensor b = ToRaw(Peft(q + ".lora_B.weight"), at::randn({8, 2}));
  struct Case {
    const char* name;
    std::vector<RawTensor> tensors;
    std::vector<std::string> fragments;
  };
  const std::vector<Case> cases = {
      {"dora-key",
       {a, b, ToRaw(Peft(q + ".lora_magnitude_vector"), at::randn({8}))},
       {Peft(q + ".lora_magnitude_vector"), "DoRA"}},
      {"bias-key",
       {a, b, ToRaw(Peft(q + ".lora_B.bias"), at::randn({8}))},
       {Peft(q + ".lora_B.bias"), "bias"}},
      {"unknown-lora",
       {a, b, ToRaw(Peft(q + ".lora_C.weight"), at::randn({2, 2}))},
       {Peft(q + ".lora_C.weight"), "not a recognised LoRA tensor"}},
      {"no-prefix",
       {a, b, ToRaw(q + ".lora_A.weight", at::randn({2, 6}))},
       {q + ".lora_A.weight", "base_model.model."}},
      {"missing-b", {a}, {Peft(q + ".lora_A.weight"), "no matching lora_B"}},
      {"missing-a", {b}, {Peft(q + ".lora_B.weight"), "no matching lora_A"}},
      {"twice",
       {a, b, ToRaw(Peft(q + ".lora_A.default.weight"), at::randn({2, 6}))},
       {Peft(q + ".lora_A.default.weight"), Peft(q + ".lora_A.weight")}},
      {"rank",
       {ToRaw(Peft(q + ".lora_A.weight"), at::randn({3, 6})),
        ToRaw(Peft(q + ".lora_B.weight"), at::randn({8, 3}))},
       {Peft(q + ".lora_A.weight"), "rank mismatch", "r = 2"}},
      {"shape",
       {a, ToRaw(Peft(q + ".lora_B.weight"), at::randn({9, 2}))},
       {Peft(q + ".lora_B.weight"), "shape mismatch", "[9, 2]", kQ, "[8, 6]"}},
      {"factor-1d",
       {ToRaw(Peft(q + ".lora_A.weight"), at::randn({12})), b},
       {Peft(q + ".lora_A.weight"), "2-D"}},
      {"factor-int",
       {ToRaw(Peft(q + ".lora_A.weight"), at::zeros({2, 6}, at::kInt)), b},
       {Peft(q + ".lora_A.weight"), "I32"}},
      {"base-1d",
       {ToRaw(Peft("model.norm.lora_A.weight"), at::randn({2, 6})),
        ToRaw(Peft("model.norm.lora_B.weight"), at::randn({6, 2}))},
       {Peft("model.norm.lora_A.weight"), kNorm, "2-D"}},
      {"mixed-kinds",
       {ToRaw(Peft("model.embed_tokens.lora_embedding_A"), at::randn({2, 10})),
        ToRaw(Peft("model.embed_tokens.lora_B.weight"), at::randn({6, 2}))},
       {"Embedding"}},
      {"empty", {}, {"no tensors"}},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.name);
    const std::string dir = WriteAdapter(c.name, kBasicConfig, c.tensors);
    std::vector<std::string> fragments = c.fragments;
    fragments.push_back(dir + "/adapter_model.safetensors");
    ExpectError(Open(dir).status(), absl::StatusCode::kInvalidArgument,
                fragments);
  }
  // A full tensor that matches no base tensor: NOT_FOUND, saying what it is.
  const std::string dir = WriteAdapter(
      "unknown-full", kBasicConfig,
      {a, b, ToRaw(Peft("model.rotary.inv_freq"), at::randn({3}))});
  ExpectError(Open(dir).status(), absl::StatusCode::kNotFound,
              {Peft("model.rotary.inv_freq"), "not a LoRA factor",
               "'model.rotary.inv_freq'", "'rotary.inv_freq'"});
}

TEST_F(LoraAdapterTest, MissingFilesAndDirectories) {
  const std::string dir = dir_.Join("no-weights");
  ASSERT_EQ(::mkdir(dir.c_str(), 0755), 0);
  WriteFileOrDie(dir + "/adapter_config.json", kBasicConfig);
  EXPECT_TRUE(IsLoraAdapterDir(dir));
  ExpectError(Open(dir).status(), absl::StatusCode::kNotFound,
              {dir, "adapter_model.safetensors"});

  // A pickle adapter is refused as such.
  WriteFileOrDie(dir + "/adapter_model.bin", "\x80\x02}q\x00.");
  ExpectError(Open(dir).status(), absl::StatusCode::kInvalidArgument,
              {"adapter_model.bin"});

  ExpectError(Open(dir_.Join("nowhere")).status(), absl::StatusCode::kNotFound,
              {dir_.Join("nowhere")});
  const std::string no_config = dir_.Join("no-config");
  ASSERT_EQ(::mkdir(no_config.c_str(), 0755), 0);
  EXPECT_EQ(Open(no_config).status().code(), absl::StatusCode::kNotFound);

  EXPECT_FALSE(IsLoraAdapterDir(no_config));
  EXPECT_FALSE(IsLoraAdapterDir(base_dir_));
  EXPECT_FALSE(IsLoraAdapterDir(dir + "/adapter_config.json"));
  EXPECT_FALSE(IsLoraAdapterDir(dir_.Join("nowhere")));
}

TEST_F(LoraAdapterTest, ChecksFilesAgainstTheResolverRoots) {
  const std::string dir =
      WriteAdapter("outside", kBasicConfig,
                   {ToRaw(Peft("model.layers.0.self_attn.q_proj.lora_A.weight"),
                          at::randn({2, 6})),
                    ToRaw(Peft("model.layers.0.self_attn.q_proj.lora_B.weight"),
                          at::randn({8, 2}))});
  auto resolver = UriResolver::Create({base_dir_});
  ASSERT_TRUE(resolver.ok()) << resolver.status();
  Checkpoint::Options options;
  options.resolver = &*resolver;
  EXPECT_EQ(LoraFineTuned::Create(base_.get(), dir, options).status().code(),
            absl::StatusCode::kPermissionDenied);

  auto wide = UriResolver::Create({dir_.path()});
  ASSERT_TRUE(wide.ok()) << wide.status();
  options.resolver = &*wide;
  EXPECT_TRUE(LoraFineTuned::Create(base_.get(), dir, options).ok());
}

}  // namespace
}  // namespace tailor
