// Calibration sharded by data (issue #20 point 3): `tailorctl calibrate
// --shard I --shards 3` partial files merged with `calibrate --merge` equal
// a single run over all the windows (nsamples exactly, every Hessian within
// 1e-5 of its largest element); parts of another model (even of the same
// architecture), of another split of the data, a missing or a duplicated
// shard are refused naming the file or the shard; partial files without a
// shard record (written before it existed) still merge among themselves;
// shard flags are checked. Runs the real binary.

#include <ATen/ATen.h>
#include <gtest/gtest.h>
#include <stdlib.h>

#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "io/calibration_file.h"
#include "model/llama.h"
#include "model/tiny_llama.h"
#include "testing/test_util.h"
#include "util/file_util.h"

namespace tailor {
namespace {

using ::tailor::testing::CliResult;
using ::tailor::testing::RunTailorctl;
using ::tailor::testing::TempDir;
using ::tailor::testing::WriteFileOrDie;

class CalibrateShardTest : public ::testing::Test {
 protected:
  void SetUp() override {
    // model1 and model2 differ in architecture; model3 is model1's
    // architecture with other weights.
    for (int layers : {1, 2, 3}) {
      absl::StatusOr<LlamaModel> model = LlamaModel::Init(
          ::tailor::testing::TinyByteLlama(layers == 3 ? 1 : layers),
          layers == 3 ? 10 : 9, at::kFloat, at::kCPU);
      ASSERT_TRUE(model.ok()) << model.status();
      ASSERT_TRUE(model->Save(dir_.Join(absl::StrCat("model", layers))).ok());
    }
    std::string text;
    for (int i = 0; i < 60; ++i) {
      text += "calibration text, line " + std::to_string(i) + "\n";
    }
    WriteFileOrDie(dir_.Join("data.txt"), text);
  }

  CliResult Calibrate(const std::string& out, std::vector<std::string> extra,
                      int layers = 1, const char* samples = "7") {
    std::vector<std::string> args = {"calibrate",
                                     "--model",
                                     dir_.Join(absl::StrCat("model", layers)),
                                     "--data",
                                     dir_.Join("data.txt"),
                                     "--out",
                                     out,
                                     "--samples",
                                     samples,
                                     "--seq-len",
                                     "16",
                                     "--batch-size",
                                     "2",
                                     "--device",
                                     "cpu",
                                     "-q"};
    args.insert(args.end(), extra.begin(), extra.end());
    return RunTailorctl(args, dir_.path());
  }

  std::unique_ptr<CalibrationFile> Open(const std::string& path) {
    auto f = CalibrationFile::Open(path, {});
    EXPECT_TRUE(f.ok()) << f.status();
    return f.ok() ? *std::move(f) : nullptr;
  }

  TempDir dir_;
};

TEST_F(CalibrateShardTest, MergedShardsEqualASingleRun) {
  const std::string single = dir_.Join("single.safetensors");
  CliResult r = Calibrate(single, {});
  ASSERT_EQ(r.code, 0) << r.err;
  std::vector<std::string> merge = {"calibrate", "--merge",
                                    dir_.Join("merged.safetensors")};
  int64_t parts_samples = 0;
  for (int i = 0; i < 3; ++i) {
    const std::string part = dir_.Join(absl::StrCat("part", i));
    r = Calibrate(part, {"--shard", std::to_string(i), "--shards", "3"});
    ASSERT_EQ(r.code, 0) << r.err;
    auto f = Open(part);
    ASSERT_NE(f, nullptr);
    EXPECT_GT(f->nsamples(), 0);
    parts_samples += f->nsamples();
    merge.push_back(part);
  }
  r = RunTailorctl(merge, dir_.path());
  ASSERT_EQ(r.code, 0) << r.err;
  auto a = Open(single);
  auto b = Open(dir_.Join("merged.safetensors"));
  ASSERT_NE(a, nullptr);
  ASSERT_NE(b, nullptr);
  EXPECT_EQ(a->nsamples(), b->nsamples());
  EXPECT_EQ(a->nsamples(), parts_samples);
  EXPECT_EQ(a->aliases(), b->aliases());
  ASSERT_EQ(a->entries().size(), b->entries().size());
  ASSERT_FALSE(a->entries().empty());
  for (const TensorInfo& e : a->entries()) {
    auto ha = a->Load(e.name);
    auto hb = b->Load(e.name);
    ASSERT_TRUE(ha.ok() && hb.ok()) << e.name;
    const double scale = ha->abs().max().item<double>();
    const double diff = (*ha - *hb).abs().max().item<double>();
    EXPECT_LE(diff, 1e-5 * scale) << e.name;
    EXPECT_GT(scale, 0) << e.name;
  }
}

TEST_F(CalibrateShardTest, PartsOfAnotherModelAreRefused) {
  const std::string p0 = dir_.Join("p0"), p1 = dir_.Join("p1");
  ASSERT_EQ(Calibrate(p0, {"--shard", "0", "--shards", "2"}).code, 0);
  ASSERT_EQ(Calibrate(p1, {"--shard", "1", "--shards", "2"}, 2).code, 0);
  CliResult r =
      RunTailorctl({"calibrate", "--merge", dir_.Join("m.safetensors"), p0, p1},
                   dir_.path());
  EXPECT_NE(r.code, 0);
  EXPECT_TRUE(absl::StrContains(r.err, p1)) << r.err;
  EXPECT_TRUE(absl::StrContains(r.err, "not of one model")) << r.err;
  EXPECT_FALSE(PathExists(dir_.Join("m.safetensors")));
}

// What the shard record adds: the old checks (keys, shapes, aliases)
// cannot tell these parts apart.
TEST_F(CalibrateShardTest, PartsOfAnotherSplitOrWeightsAreRefused) {
  const std::string p0 = dir_.Join("p0"), p1 = dir_.Join("p1");
  const std::string other_weights = dir_.Join("w1"),
                    other_split = dir_.Join("s1");
  ASSERT_EQ(Calibrate(p0, {"--shard", "0", "--shards", "2"}).code, 0);
  ASSERT_EQ(Calibrate(p1, {"--shard", "1", "--shards", "2"}).code, 0);
  ASSERT_EQ(Calibrate(other_weights, {"--shard", "1", "--shards", "2"}, 3).code,
            0);
  ASSERT_EQ(
      Calibrate(other_split, {"--shard", "1", "--shards", "2"}, 1, "8").code,
      0);
  auto part = Open(p1);
  ASSERT_NE(part, nullptr);
  ASSERT_TRUE(part->shard().has_value());
  EXPECT_EQ(part->shard()->index, 1);
  EXPECT_EQ(part->shard()->count, 2);
  EXPECT_EQ(part->shard()->windows, 7);
  const std::string out = dir_.Join("m.safetensors");
  CliResult r = RunTailorctl({"calibrate", "--merge", out, p0, other_weights},
                             dir_.path());
  EXPECT_NE(r.code, 0);
  EXPECT_TRUE(absl::StrContains(r.err, other_weights)) << r.err;
  EXPECT_TRUE(absl::StrContains(r.err, "its model differs")) << r.err;
  r = RunTailorctl({"calibrate", "--merge", out, p0, other_split}, dir_.path());
  EXPECT_NE(r.code, 0);
  EXPECT_TRUE(absl::StrContains(r.err, other_split)) << r.err;
  EXPECT_TRUE(absl::StrContains(r.err, "differs")) << r.err;
  EXPECT_FALSE(PathExists(out));
  // The right pair merges.
  r = RunTailorctl({"calibrate", "--merge", out, p1, p0}, dir_.path());
  EXPECT_EQ(r.code, 0) << r.err;
}

TEST_F(CalibrateShardTest, MissingOrDuplicatedShardsAreRefused) {
  std::vector<std::string> parts;
  for (int i = 0; i < 3; ++i) {
    parts.push_back(dir_.Join(absl::StrCat("p", i)));
    ASSERT_EQ(
        Calibrate(parts[i], {"--shard", std::to_string(i), "--shards", "3"})
            .code,
        0);
  }
  const std::string out = dir_.Join("m.safetensors");
  CliResult r = RunTailorctl({"calibrate", "--merge", out, parts[0], parts[2]},
                             dir_.path());
  EXPECT_NE(r.code, 0);
  EXPECT_TRUE(absl::StrContains(r.err, "shard 1 of 3 is missing")) << r.err;
  const std::string copy = dir_.Join("p1-again");
  WriteFileOrDie(copy, ::tailor::testing::ReadFileOrDie(parts[1]));
  r = RunTailorctl(
      {"calibrate", "--merge", out, parts[0], parts[1], copy, parts[2]},
      dir_.path());
  EXPECT_NE(r.code, 0);
  EXPECT_TRUE(absl::StrContains(r.err, "shard 1 of 3 is given twice")) << r.err;
  EXPECT_TRUE(absl::StrContains(r.err, copy)) << r.err;
  EXPECT_FALSE(PathExists(out));
}

// Files without a shard record (a single run's, or partial files of an
// earlier version) are still read and merged among themselves; mixed with
// partial files that have one they are refused.
TEST_F(CalibrateShardTest, FilesWithoutAShardRecordStillMerge) {
  const std::string single = dir_.Join("single"), p0 = dir_.Join("p0");
  ASSERT_EQ(Calibrate(single, {}).code, 0);
  ASSERT_EQ(Calibrate(p0, {"--shard", "0", "--shards", "2"}).code, 0);
  auto f = Open(single);
  ASSERT_NE(f, nullptr);
  EXPECT_FALSE(f->shard().has_value());
  CliResult r =
      RunTailorctl({"calibrate", "--merge", dir_.Join("twice"), single, single},
                   dir_.path());
  EXPECT_EQ(r.code, 0) << r.err;
  auto merged = Open(dir_.Join("twice"));
  ASSERT_NE(merged, nullptr);
  EXPECT_EQ(merged->nsamples(), 2 * f->nsamples());
  r = RunTailorctl({"calibrate", "--merge", dir_.Join("mixed"), p0, single},
                   dir_.path());
  EXPECT_NE(r.code, 0);
  EXPECT_TRUE(absl::StrContains(r.err, single)) << r.err;
  EXPECT_TRUE(absl::StrContains(r.err, "no shard record")) << r.err;
  EXPECT_FALSE(PathExists(dir_.Join("mixed")));
}

TEST_F(CalibrateShardTest, ShardFlagsAreChecked) {
  CliResult r = Calibrate(dir_.Join("x"), {"--shard", "3", "--shards", "3"});
  EXPECT_NE(r.code, 0);
  EXPECT_TRUE(absl::StrContains(r.err, "--shard: must be in 0..2")) << r.err;
  ::unsetenv("JOB_COMPLETION_INDEX");
  r = Calibrate(dir_.Join("x"), {"--shards", "3"});
  EXPECT_NE(r.code, 0);
  EXPECT_TRUE(absl::StrContains(r.err, "JOB_COMPLETION_INDEX")) << r.err;
  ::setenv("JOB_COMPLETION_INDEX", "1", 1);
  r = Calibrate(dir_.Join("x"), {"--shards", "3"});
  ::unsetenv("JOB_COMPLETION_INDEX");
  EXPECT_EQ(r.code, 0) << r.err;
  EXPECT_TRUE(PathExists(dir_.Join("x")));
}

}  // namespace
}  // namespace tailor
