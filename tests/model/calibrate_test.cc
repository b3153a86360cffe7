#include "model/calibrate.h"

#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <string>

#include "absl/strings/match.h"
#include "fusion/calibration.h"
#include "model/llama.h"
#include "model/tiny_llama.h"
#include "testing/test_util.h"
#include "util/file_util.h"

namespace tailor {
namespace {

using ::tailor::testing::RawTensor;
using ::tailor::testing::RunTailorctl;
using ::tailor::testing::SerializeSafetensors;
using ::tailor::testing::TempDir;
using ::tailor::testing::ToRaw;
using ::tailor::testing::WriteFileOrDie;

LlamaConfig TinyConfig() { return ::tailor::testing::TinyByteLlama(1); }

std::string Text() {
  std::string text;
  for (int i = 0; i < 40; ++i)
    text += "calibration text, line " + std::to_string(i) + "\n";
  return text;
}

TEST(CalibrationTokensTest, EvenlySpacedFromText) {
  TempDir dir;
  const std::string text = Text();
  WriteFileOrDie(dir.Join("data.txt"), text);
  absl::StatusOr<at::Tensor> tokens =
      LoadCalibrationTokens(dir.Join("data.txt"), 3, 5);
  ASSERT_TRUE(tokens.ok()) << tokens.status();
  ASSERT_EQ(tokens->sizes(), (std::vector<int64_t>{3, 5}));
  const int64_t span = static_cast<int64_t>(text.size()) - 5;
  for (int64_t i = 0; i < 3; ++i) {
    const int64_t offset = i * span / 2;  // 0, middle, last window
    for (int64_t j = 0; j < 5; ++j) {
      EXPECT_EQ((*tokens)[i][j].item<int64_t>(),
                static_cast<uint8_t>(text[offset + j]));
    }
  }
}

TEST(CalibrationTokensTest, SafetensorsStreamsAndRows) {
  TempDir dir;
  const at::Tensor rows = at::arange(60, at::kInt).reshape({6, 10});
  WriteFileOrDie(dir.Join("rows.safetensors"),
                 SerializeSafetensors({ToRaw("input_ids", rows)}));
  absl::StatusOr<at::Tensor> t =
      LoadCalibrationTokens(dir.Join("rows.safetensors"), 4, 7);
  ASSERT_TRUE(t.ok()) << t.status();
  EXPECT_TRUE(
      at::equal(*t, rows.narrow(0, 0, 4).narrow(1, 0, 7).to(at::kLong)));

  EXPECT_EQ(
      LoadCalibrationTokens(dir.Join("rows.safetensors"), 7, 7).status().code(),
      absl::StatusCode::kInvalidArgument);

  const at::Tensor stream = at::arange(50, at::kLong);
  WriteFileOrDie(dir.Join("stream.safetensors"),
                 SerializeSafetensors(
                     {ToRaw("ids", stream), ToRaw("scale", at::ones({2}))}));
  t = LoadCalibrationTokens(dir.Join("stream.safetensors"), 2, 10);
  ASSERT_TRUE(t.ok()) << t.status();
  EXPECT_EQ((*t)[1][0].item<int64_t>(), 40);  // the last window

  WriteFileOrDie(
      dir.Join("two.safetensors"),
      SerializeSafetensors({ToRaw("a", stream), ToRaw("b", stream)}));
  absl::Status s =
      LoadCalibrationTokens(dir.Join("two.safetensors"), 1, 4).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(absl::StrContains(s.message(), "exactly one integer tensor"))
      << s;

  WriteFileOrDie(dir.Join("float.safetensors"),
                 SerializeSafetensors({ToRaw("x", at::ones({8}))}));
  s = LoadCalibrationTokens(dir.Join("float.safetensors"), 1, 4).status();
  EXPECT_TRUE(absl::StrContains(s.message(), "no integer tensor")) << s;

  WriteFileOrDie(dir.Join("short.txt"), "abc");
  s = LoadCalibrationTokens(dir.Join("short.txt"), 1, 4).status();
  EXPECT_TRUE(absl::StrContains(s.message(), "fewer than one window")) << s;

  WriteFileOrDie(dir.Join("model.bin"), "abcdefgh");
  s = LoadCalibrationTokens(dir.Join("model.bin"), 1, 4).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
}

// The file `calibrate` writes holds, for layer 0's q_proj, (2/n) X^T X of
// the first RMSNorm's output computed here directly from the embeddings.
TEST(CalibrateJobTest, WritesTheInputGramMatrices) {
  TempDir dir;
  absl::StatusOr<LlamaModel> model =
      LlamaModel::Init(TinyConfig(), 9, at::kFloat, at::kCPU);
  ASSERT_TRUE(model.ok());
  {
    at::NoGradGuard g;
    for (const auto& [name, t] : model->parameters()) {
      if (absl::StrContains(name, "layernorm")) t.uniform_(0.5, 1.5);
    }
  }
  LlamaSaveOptions save;
  save.dtype = DType::kF32;
  ASSERT_TRUE(model->Save(dir.Join("model"), save).ok());
  const std::string text = Text();
  WriteFileOrDie(dir.Join("data.txt"), text);

  absl::StatusOr<UriResolver> resolver = UriResolver::Create({dir.path()});
  ASSERT_TRUE(resolver.ok());
  CalibrateJob job;
  job.model_uri = dir.Join("model");
  job.data_uri = dir.Join("data.txt");
  job.out_uri = dir.Join("h.safetensors");
  job.samples = 4;
  job.seq_len = 12;
  job.device = "cpu";
  job.options.batch_size = 3;
  ASSERT_TRUE(RunCalibrateJob(job, *resolver).ok());

  auto calib = CalibrationFile::Open(dir.Join("h.safetensors"), {});
  ASSERT_TRUE(calib.ok()) << calib.status();
  EXPECT_EQ((*calib)->nsamples(), 48);
  EXPECT_EQ(*(*calib)->KeyFor("model.layers.0.self_attn.k_proj.weight"),
            "model.layers.0.self_attn.q_proj.hessian");

  // Direct computation in float64.
  const int64_t span = static_cast<int64_t>(text.size()) - 12;
  at::Tensor ids = at::empty({4, 12}, at::kLong);
  for (int64_t i = 0; i < 4; ++i) {
    for (int64_t j = 0; j < 12; ++j) {
      ids[i][j] =
          static_cast<int64_t>(static_cast<uint8_t>(text[i * span / 3 + j]));
    }
  }
  const at::Tensor embed =
      model->parameters().at("model.embed_tokens.weight").to(at::kDouble);
  const at::Tensor norm = model->parameters()
                              .at("model.layers.0.input_layernorm.weight")
                              .to(at::kDouble);
  const at::Tensor x = embed.index({ids.reshape({-1})});
  const at::Tensor normed =
      norm * x / (x.pow(2).mean(-1, true) + TinyConfig().rms_norm_eps).sqrt();
  const at::Tensor want = normed.t().matmul(normed) * (2.0 / 48);
  absl::StatusOr<at::Tensor> got =
      (*calib)->Load("model.layers.0.self_attn.q_proj.hessian");
  ASSERT_TRUE(got.ok());
  EXPECT_TRUE(at::allclose(got->to(at::kDouble), want, 1e-4, 1e-5))
      << (got->to(at::kDouble) - want).abs().max().item<double>();

  // Refusals: an existing output, ids beyond the vocabulary.
  absl::Status s = RunCalibrateJob(job, *resolver);
  EXPECT_EQ(s.code(), absl::StatusCode::kAlreadyExists) << s;
  WriteFileOrDie(dir.Join("big.safetensors"),
                 SerializeSafetensors(
                     {ToRaw("input_ids", at::full({2, 12}, 999, at::kLong))}));
  job.data_uri = dir.Join("big.safetensors");
  job.out_uri = dir.Join("h2.safetensors");
  job.samples = 2;
  s = RunCalibrateJob(job, *resolver);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(absl::StrContains(s.message(), "vocab_size")) << s;
  EXPECT_FALSE(PathExists(dir.Join("h2.safetensors")));
}

TEST(CalibrateCliTest, WritesFileAndMapsErrorsToExitCodes) {
  TempDir dir;
  absl::StatusOr<LlamaModel> model =
      LlamaModel::Init(TinyConfig(), 9, at::kFloat, at::kCPU);
  ASSERT_TRUE(model.ok());
  ASSERT_TRUE(model->Save(dir.Join("model")).ok());
  WriteFileOrDie(dir.Join("data.txt"), Text());
  const std::vector<std::string> args = {"calibrate",
                                         "--model",
                                         dir.Join("model"),
                                         "--data",
                                         dir.Join("data.txt"),
                                         "--out",
                                         dir.Join("h.safetensors"),
                                         "--samples",
                                         "3",
                                         "--seq-len",
                                         "16"};
  auto r = RunTailorctl(args, dir.path());
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_TRUE(absl::StrContains(r.out, "3 windows x 16 tokens")) << r.out;
  EXPECT_TRUE(IsRegularFile(dir.Join("h.safetensors")));

  r = RunTailorctl(args, dir.path());  // exists
  EXPECT_EQ(r.code, 3) << r.err;
  EXPECT_TRUE(absl::StrContains(r.err, "already exists")) << r.err;

  r = RunTailorctl({"calibrate", "--model", dir.Join("none"), "--data",
                    dir.Join("data.txt"), "--out", dir.Join("x.safetensors")},
                   dir.path());
  EXPECT_EQ(r.code, 4) << r.err;

  r = RunTailorctl({"calibrate", "--model", dir.Join("model"), "--data",
                    dir.Join("data.txt"), "--out", dir.Join("y.safetensors"),
                    "--seq-len", "100000"},
                   dir.path());
  EXPECT_EQ(r.code, 3) << r.err;
  EXPECT_TRUE(absl::StrContains(r.err, "--seq-len")) << r.err;

  r = RunTailorctl({"calibrate", "--model", dir.Join("model")}, dir.path());
  EXPECT_EQ(r.code, 2) << r.err;
}

}  // namespace
}  // namespace tailor
