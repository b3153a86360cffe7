#include "model/calibrate.h"

#include <ATen/ATen.h>
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <string>
#include <thread>
#include <vector>

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

// Issue #14 point 7, below the CLI: with a resolver, the token data,
// config.json and the output are opened beneath their root, so a path that
// was canonical when resolved but is a symlink out of the root by the time
// it is opened (simulated by handing the function the swapped path) is
// refused, and in-root symlinks still work.
TEST(CalibrateRootsTest, InputsSwappedForSymlinksOutTheRootAreRefused) {
  TempDir dir;
  const std::string root = dir.Join("root"), outside = dir.Join("outside");
  ASSERT_TRUE(MakeDirectories(root + "/model").ok());
  ASSERT_TRUE(MakeDirectories(outside).ok());
  WriteFileOrDie(outside + "/secret.txt", Text());
  WriteFileOrDie(outside + "/secret.safetensors",
                 SerializeSafetensors({ToRaw(
                     "input_ids", at::arange(64, at::kLong).view({2, 32}))}));
  WriteFileOrDie(outside + "/config.json", TinyConfig().ToJson().dump());
  absl::StatusOr<UriResolver> resolver = UriResolver::Create({root});
  ASSERT_TRUE(resolver.ok());

  ASSERT_EQ(::symlink((outside + "/secret.txt").c_str(),
                      (root + "/data.txt").c_str()),
            0);
  absl::Status s =
      LoadCalibrationTokens(root + "/data.txt", 1, 4, &*resolver).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kPermissionDenied) << s;
  EXPECT_TRUE(absl::StrContains(s.message(), "data.txt")) << s;
  ASSERT_EQ(::symlink((outside + "/secret.safetensors").c_str(),
                      (root + "/ids.safetensors").c_str()),
            0);
  s = LoadCalibrationTokens(root + "/ids.safetensors", 1, 4, &*resolver)
          .status();
  EXPECT_EQ(s.code(), absl::StatusCode::kPermissionDenied) << s;
  // Without a resolver (library callers, the demo) the path is taken as is.
  EXPECT_TRUE(LoadCalibrationTokens(root + "/data.txt", 1, 4).ok());

  ASSERT_EQ(::symlink((outside + "/config.json").c_str(),
                      (root + "/model/config.json").c_str()),
            0);
  s = LlamaConfig::Load(root + "/model", &*resolver).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kPermissionDenied) << s;
  EXPECT_TRUE(absl::StrContains(s.message(), "config.json")) << s;

  // In-root links are followed.
  WriteFileOrDie(root + "/real.txt", Text());
  WriteFileOrDie(root + "/config.json", TinyConfig().ToJson().dump());
  ASSERT_EQ(::symlink("real.txt", (root + "/in.txt").c_str()), 0);
  ASSERT_TRUE(MakeDirectories(root + "/model-in").ok());
  ASSERT_EQ(
      ::symlink("../config.json", (root + "/model-in/config.json").c_str()), 0);
  EXPECT_TRUE(LoadCalibrationTokens(root + "/in.txt", 1, 4, &*resolver).ok());
  absl::StatusOr<LlamaConfig> config =
      LlamaConfig::Load(root + "/model-in", &*resolver);
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(*config, TinyConfig());
}

// A swapper flips the data file between a regular file in the root and a
// symlink out of it while the data is read again and again: every read
// either sees the root's bytes or is refused, never the outside file's.
TEST(CalibrateRootsTest, RacingSymlinkSwapNeverReadsOutsideTheRoot) {
  TempDir dir;
  const std::string root = dir.Join("root"), outside = dir.Join("outside");
  ASSERT_TRUE(MakeDirectories(root).ok());
  ASSERT_TRUE(MakeDirectories(outside).ok());
  WriteFileOrDie(root + "/inside.txt", std::string(64, 'a'));
  WriteFileOrDie(outside + "/secret.txt", std::string(64, 'z'));
  WriteFileOrDie(root + "/data.txt", std::string(64, 'a'));
  absl::StatusOr<UriResolver> resolver = UriResolver::Create({root});
  ASSERT_TRUE(resolver.ok());

  std::atomic<bool> stop{false};
  std::thread swapper([&] {
    // Renames are atomic: data.txt is always one or the other. Each round
    // re-creates the two sources from their stable twins.
    for (int i = 0; !stop.load(); ++i) {
      const bool out = i % 2 == 0;
      const std::string tmp = root + (out ? "/tmp-link" : "/tmp-file");
      if (out) {
        (void)::symlink((outside + "/secret.txt").c_str(), tmp.c_str());
      } else {
        (void)::link((root + "/inside.txt").c_str(), tmp.c_str());
      }
      (void)::rename(tmp.c_str(), (root + "/data.txt").c_str());
    }
  });
  int read_inside = 0, refused = 0, other = 0;
  for (int i = 0; i < 400; ++i) {
    absl::StatusOr<at::Tensor> t =
        LoadCalibrationTokens(root + "/data.txt", 1, 8, &*resolver);
    if (t.ok()) {
      // 'z' would be the outside file's bytes.
      EXPECT_EQ(t->max().item<int64_t>(), 'a');
      ++read_inside;
    } else if (t.status().code() == absl::StatusCode::kPermissionDenied) {
      ++refused;
    } else {
      ++other;  // e.g. NOT_FOUND in a rename's instant: allowed
    }
  }
  stop.store(true);
  swapper.join();
  EXPECT_EQ(read_inside + refused + other, 400);
  // Both states were seen: the race really ran.
  EXPECT_GT(read_inside + refused, 0);
}

// The output's directory swapped for a symlink out of the root after the
// output was resolved: nothing is written there and the error names it.
TEST(CalibrateRootsTest, OutputDirectorySwappedForSymlinkIsRefused) {
  TempDir dir;
  const std::string root = dir.Join("root"), outside = dir.Join("outside");
  ASSERT_TRUE(MakeDirectories(root + "/outs").ok());
  ASSERT_TRUE(MakeDirectories(outside).ok());
  absl::StatusOr<UriResolver> resolver = UriResolver::Create({root});
  ASSERT_TRUE(resolver.ok());
  absl::StatusOr<std::string> out =
      resolver->ResolveForWrite(root + "/outs/h.safetensors");
  ASSERT_TRUE(out.ok()) << out.status();
  // The swap: outs/ becomes a symlink to the outside directory.
  ASSERT_EQ(::rename((root + "/outs").c_str(), (root + "/outs.old").c_str()),
            0);
  ASSERT_EQ(::symlink(outside.c_str(), (root + "/outs").c_str()), 0);

  absl::StatusOr<LlamaModel> model =
      LlamaModel::Init(TinyConfig(), 9, at::kFloat, at::kCPU);
  ASSERT_TRUE(model.ok());
  at::Tensor tokens = at::arange(32, at::kLong).view({2, 16});
  CalibrateOptions options;
  options.resolver = &*resolver;
  absl::Status s = WriteCalibration(*model, tokens, *out, options);
  EXPECT_EQ(s.code(), absl::StatusCode::kPermissionDenied) << s;
  EXPECT_TRUE(absl::StrContains(s.message(), "outs/h.safetensors")) << s;
  auto left = ListDirectory(outside);
  ASSERT_TRUE(left.ok());
  EXPECT_TRUE(left->empty()) << (*left)[0];
  // Put back, the same call writes the file (and nothing else) there.
  ASSERT_EQ(::unlink((root + "/outs").c_str()), 0);
  ASSERT_EQ(::rename((root + "/outs.old").c_str(), (root + "/outs").c_str()),
            0);
  ASSERT_TRUE(WriteCalibration(*model, tokens, *out, options).ok());
  auto names = ListDirectory(root + "/outs");
  ASSERT_TRUE(names.ok());
  EXPECT_EQ(*names, std::vector<std::string>{"h.safetensors"});
}

}  // namespace
}  // namespace tailor
