#include "demo/trainer.h"

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <gtest/gtest.h>

#include <cmath>
#include <map>
#include <string>

#include "absl/strings/match.h"
#include "demo/byte_corpus.h"
#include "model/llama.h"
#include "model/tiny_llama.h"
#include "testing/test_util.h"

namespace tailor {
namespace {

using ::tailor::testing::BitEqual;

LlamaConfig TinyConfig() { return ::tailor::testing::TinyByteLlama(2); }

ByteCorpus TextCorpus() {
  std::string text;
  for (int i = 0; i < 200; ++i) text += "the quick brown fox jumps. ";
  CorpusOptions o;
  o.chunk_tokens = 64;
  absl::StatusOr<ByteCorpus> corpus = ByteCorpus::FromBytes("fox", text, o);
  EXPECT_TRUE(corpus.ok()) << corpus.status();
  return *std::move(corpus);
}

std::map<std::string, at::Tensor> Snapshot(const LlamaModel& model) {
  std::map<std::string, at::Tensor> out;
  for (const auto& [name, t] : model.parameters()) out[name] = t.clone();
  return out;
}

// Two optimizer steps against an independent float64 AdamW written out
// here: the same batches (same generator seed), gradients from autograd on a
// float64 copy of the model, the update rule spelled out per element.
TEST(TrainerTest, AdamWStepsMatchFloat64Reference) {
  const ByteCorpus corpus = TextCorpus();
  absl::StatusOr<LlamaModel> model =
      LlamaModel::Init(TinyConfig(), 3, at::kDouble, at::kCPU);
  ASSERT_TRUE(model.ok());
  absl::StatusOr<LlamaModel> reference =
      LlamaModel::Init(TinyConfig(), 3, at::kDouble, at::kCPU);
  ASSERT_TRUE(reference.ok());

  TrainOptions o;
  o.steps = 2;
  o.batch_size = 3;
  o.seq_len = 9;
  o.lr = 0.01;
  o.warmup_steps = 0;
  o.min_lr_ratio = 0.5;
  o.weight_decay = 0.1;
  o.grad_clip = 0.5;  // small enough to clip
  o.seed = 5;
  ASSERT_TRUE(Train(*model, corpus, o).ok());

  // Reference.
  at::Generator gen = at::detail::createCPUGenerator(o.seed);
  std::map<std::string, at::Tensor> m, v;
  for (int step = 0; step < 2; ++step) {
    const at::Tensor batch = corpus.SampleTrain(o.batch_size, o.seq_len, gen);
    for (const auto& [name, t] : reference->parameters()) {
      t.requires_grad_(true);
      if (t.grad().defined()) t.mutable_grad().zero_();
    }
    reference->Loss(batch).backward();
    at::NoGradGuard no_grad;
    double sq = 0;
    for (const auto& [name, t] : reference->parameters()) {
      sq += t.grad().pow(2).sum().item<double>();
    }
    const double norm = std::sqrt(sq);
    const double clip = norm > o.grad_clip ? o.grad_clip / norm : 1.0;
    // Cosine from lr to min_lr over 2 steps: step 0 -> lr, step 1 -> 0.75 lr.
    const double lr = step == 0 ? o.lr : o.lr * (0.5 + 0.5 * 0.5);
    for (const auto& [name, t] : reference->parameters()) {
      const at::Tensor g = t.grad() * clip;
      if (!m.count(name)) {
        m[name] = at::zeros_like(t);
        v[name] = at::zeros_like(t);
      }
      m[name] = o.beta1 * m[name] + (1 - o.beta1) * g;
      v[name] = o.beta2 * v[name] + (1 - o.beta2) * g * g;
      const double bc1 = 1 - std::pow(o.beta1, step + 1);
      const double bc2 = 1 - std::pow(o.beta2, step + 1);
      at::Tensor updated = t.detach().clone();
      if (t.dim() == 2) updated = updated * (1 - lr * o.weight_decay);
      updated -= lr * (m[name] / bc1) / ((v[name] / bc2).sqrt() + o.eps);
      t.detach().copy_(updated);
    }
  }
  for (const auto& [name, t] : model->parameters()) {
    const at::Tensor want = reference->parameters().at(name).detach();
    EXPECT_TRUE(at::allclose(t, want, 1e-9, 1e-12))
        << name << " max diff " << (t - want).abs().max().item<double>();
    EXPECT_FALSE(t.requires_grad()) << name;
  }
}

TEST(TrainerTest, LossFallsAndHeldOutImproves) {
  const ByteCorpus corpus = TextCorpus();
  absl::StatusOr<LlamaModel> model =
      LlamaModel::Init(TinyConfig(), 1, at::kFloat, at::kCPU);
  ASSERT_TRUE(model.ok());
  const at::Tensor windows = ByteCorpus::Windows(corpus.heldout(), 16, 0);
  absl::StatusOr<EvalResult> before = Evaluate(*model, windows);
  ASSERT_TRUE(before.ok()) << before.status();
  TrainOptions o;
  o.steps = 60;
  o.batch_size = 8;
  o.seq_len = 16;
  o.lr = 1e-2;
  o.warmup_steps = 5;
  absl::StatusOr<TrainResult> result = Train(*model, corpus, o);
  ASSERT_TRUE(result.ok()) << result.status();
  absl::StatusOr<EvalResult> after = Evaluate(*model, windows);
  ASSERT_TRUE(after.ok());
  // Random init: ~ln(260) = 5.56 nats; this text is very repetitive.
  EXPECT_NEAR(before->loss, std::log(260.0), 0.3);
  EXPECT_LT(after->loss, 1.5);
  EXPECT_GT(after->accuracy, 0.6);
  EXPECT_LT(result->final_loss, 1.5);
}

TEST(TrainerTest, DeterministicAndFreezesFilteredParameters) {
  const ByteCorpus corpus = TextCorpus();
  TrainOptions o;
  o.steps = 5;
  o.batch_size = 4;
  o.seq_len = 12;
  o.trainable = [](const std::string& name) {
    return absl::StartsWith(name, "model.layers.1.");
  };
  absl::StatusOr<LlamaModel> a =
      LlamaModel::Init(TinyConfig(), 2, at::kFloat, at::kCPU);
  absl::StatusOr<LlamaModel> b =
      LlamaModel::Init(TinyConfig(), 2, at::kFloat, at::kCPU);
  ASSERT_TRUE(a.ok() && b.ok());
  const auto initial = Snapshot(*a);
  absl::StatusOr<TrainResult> ra = Train(*a, corpus, o);
  ASSERT_TRUE(ra.ok()) << ra.status();
  ASSERT_TRUE(Train(*b, corpus, o).ok());
  int64_t expected_trainable = 0;
  for (const auto& [name, t] : a->parameters()) {
    EXPECT_TRUE(BitEqual(t, b->parameters().at(name))) << name;
    if (absl::StartsWith(name, "model.layers.1.")) {
      expected_trainable += t.numel();
      EXPECT_FALSE(BitEqual(t, initial.at(name))) << name << " did not move";
    } else {
      EXPECT_TRUE(BitEqual(t, initial.at(name))) << name << " moved";
    }
  }
  EXPECT_EQ(ra->trainable_parameters, expected_trainable);
}

TEST(TrainerTest, RejectsBadOptions) {
  const ByteCorpus corpus = TextCorpus();
  absl::StatusOr<LlamaModel> model =
      LlamaModel::Init(TinyConfig(), 1, at::kFloat, at::kCPU);
  ASSERT_TRUE(model.ok());
  TrainOptions o;
  o.steps = 0;
  absl::Status s = Train(*model, corpus, o).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(absl::StrContains(s.message(), "steps")) << s;
  o = TrainOptions();
  o.trainable = [](const std::string&) { return false; };
  s = Train(*model, corpus, o).status();
  EXPECT_TRUE(absl::StrContains(s.message(), "selects no parameter")) << s;
  o = TrainOptions();
  o.seq_len = 1 << 20;
  s = Train(*model, corpus, o).status();
  EXPECT_TRUE(absl::StrContains(s.message(), "seq_len")) << s;
}

// Accuracy and loss against a direct computation from the logits.
TEST(TrainerTest, EvaluateMatchesDirectComputation) {
  absl::StatusOr<LlamaModel> model =
      LlamaModel::Init(TinyConfig(), 4, at::kDouble, at::kCPU);
  ASSERT_TRUE(model.ok());
  const at::Tensor windows =
      at::randint(kByteLevelVocabSize, {5, 7},
                  at::detail::createCPUGenerator(1), at::kLong);
  absl::StatusOr<EvalResult> r = Evaluate(*model, windows, /*batch_size=*/2);
  ASSERT_TRUE(r.ok()) << r.status();
  double nll = 0;
  int64_t correct = 0;
  const at::Tensor logits = model->Forward(windows);
  for (int64_t i = 0; i < 5; ++i) {
    for (int64_t t = 0; t + 1 < 7; ++t) {
      const at::Tensor row = logits[i][t];
      const int64_t target = windows[i][t + 1].item<int64_t>();
      const double lse = std::log(row.exp().sum().item<double>());
      nll += lse - row[target].item<double>();
      correct += row.argmax().item<int64_t>() == target;
    }
  }
  EXPECT_EQ(r->tokens, 30);
  EXPECT_NEAR(r->loss, nll / 30, 1e-9);
  EXPECT_DOUBLE_EQ(r->accuracy, correct / 30.0);
  EXPECT_NEAR(r->perplexity, std::exp(nll / 30), 1e-6);
  EXPECT_EQ(Evaluate(*model, windows.narrow(1, 0, 1)).status().code(),
            absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace tailor
