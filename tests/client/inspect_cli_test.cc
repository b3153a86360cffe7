// Runs the real tailorctl binary (path in $TAILORCTL, set by CTest).

#include <ATen/ATen.h>
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdlib>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "nlohmann/json.hpp"
#include "testing/test_util.h"

namespace tailor {
namespace {

using ::tailor::testing::CliResult;
using ::tailor::testing::ReadFileOrDie;
using ::tailor::testing::RunTailorctl;
using ::tailor::testing::SerializeSafetensors;
using ::tailor::testing::TempDir;
using ::tailor::testing::ToRaw;
using ::tailor::testing::WriteFileOrDie;
using ::tailor::testing::WriteShardedCheckpoint;

class InspectCliTest : public ::testing::Test {
 protected:
  CliResult Tailorctl(const std::vector<std::string>& args) {
    return RunTailorctl(args, dir_.path());
  }
  std::string MakeDir(const std::string& name) {
    std::string p = dir_.Join(name);
    ::mkdir(p.c_str(), 0755);
    return p;
  }
  TempDir dir_;
};

TEST_F(InspectCliTest, SingleFileTable) {
  const std::string ckpt = MakeDir("single");
  WriteFileOrDie(
      ckpt + "/model.safetensors",
      SerializeSafetensors(
          {ToRaw("model.embed.weight", at::zeros({8, 4}, at::kBFloat16)),
           ToRaw("model.norm.weight", at::ones({4}))}));
  CliResult r = Tailorctl({"inspect", ckpt});
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_TRUE(absl::StrContains(r.out, "model.embed.weight")) << r.out;
  EXPECT_TRUE(absl::StrContains(r.out, "BF16"));
  EXPECT_TRUE(absl::StrContains(r.out, "[8, 4]"));
  EXPECT_TRUE(absl::StrContains(r.out, "tensors: 2  parameters: 36  bytes: 80"))
      << r.out;
}

TEST_F(InspectCliTest, ShardedJson) {
  const std::string ckpt = MakeDir("sharded");
  WriteShardedCheckpoint(ckpt, {{ToRaw("a", at::ones({2, 3}))},
                                {ToRaw("b", at::ones({5}, at::kHalf))}});
  CliResult r = Tailorctl({"inspect", "file://" + ckpt, "--output", "json"});
  ASSERT_EQ(r.code, 0) << r.err;
  nlohmann::json j = nlohmann::json::parse(r.out);
  EXPECT_EQ(j["kind"], "safetensors");
  EXPECT_TRUE(j["sharded"].get<bool>());
  EXPECT_EQ(j["files"].size(), 2u);
  EXPECT_EQ(j["totals"]["tensors"], 2);
  EXPECT_EQ(j["totals"]["bytes"], 34);
  EXPECT_EQ(j["tensors"][1]["name"], "b");
  EXPECT_EQ(j["tensors"][1]["dtype"], "F16");
  EXPECT_EQ(j["tensors"][1]["file"], "model-00002-of-00002.safetensors");
}

TEST_F(InspectCliTest, LoraAdapterAloneAndMerged) {
  const std::string base = MakeDir("base");
  WriteFileOrDie(base + "/model.safetensors",
                 SerializeSafetensors(
                     {ToRaw("model.layers.0.q_proj.weight", at::zeros({6, 4})),
                      ToRaw("model.norm.weight", at::ones({4}))}));
  const std::string adapter = MakeDir("adapter");
  WriteFileOrDie(adapter + "/adapter_config.json",
                 R"({"peft_type": "LORA", "r": 2, "lora_alpha": 4,
                     "target_modules": ["q_proj"]})");
  WriteFileOrDie(
      adapter + "/adapter_model.safetensors",
      SerializeSafetensors(
          {ToRaw("base_model.model.model.layers.0.q_proj.lora_A.weight",
                 at::ones({2, 4})),
           ToRaw("base_model.model.model.layers.0.q_proj.lora_B.weight",
                 at::ones({6, 2}))}));
  CliResult alone = Tailorctl({"inspect", adapter, "-o", "json"});
  ASSERT_EQ(alone.code, 0) << alone.err;
  nlohmann::json j = nlohmann::json::parse(alone.out);
  EXPECT_EQ(j["kind"], "lora-adapter");
  EXPECT_EQ(j["adapter"]["r"], 2);
  EXPECT_EQ(j["tensors"].size(), 2u);

  CliResult merged =
      Tailorctl({"inspect", adapter, "--base", base, "-o", "json"});
  ASSERT_EQ(merged.code, 0) << merged.err;
  j = nlohmann::json::parse(merged.out);
  EXPECT_EQ(j["kind"], "lora-merged");
  EXPECT_EQ(j["tensors"].size(), 2u);
  EXPECT_EQ(j["tensors"][0]["name"], "model.layers.0.q_proj.weight");
  EXPECT_EQ(j["tensors"][0]["from"], "lora");
  EXPECT_EQ(j["tensors"][1]["from"], "base");
}

// Issue #14 point 7: an adapter directory inside --allowed-root whose
// adapter_config.json is a symlink out of it is refused (exit 5) rather
// than read and summarised.
TEST_F(InspectCliTest, AdapterConfigSymlinkedOutTheRootIsRefused) {
  const std::string root = MakeDir("root");
  const std::string outside = MakeDir("outside");
  WriteFileOrDie(outside + "/adapter_config.json",
                 R"({"peft_type": "LORA", "r": 2, "lora_alpha": 4,
                     "target_modules": ["q_proj"]})");
  const std::string adapter = MakeDir("root/adapter");
  ASSERT_EQ(::symlink((outside + "/adapter_config.json").c_str(),
                      (adapter + "/adapter_config.json").c_str()),
            0);
  WriteFileOrDie(
      adapter + "/adapter_model.safetensors",
      SerializeSafetensors(
          {ToRaw("base_model.model.model.layers.0.q_proj.lora_A.weight",
                 at::ones({2, 4})),
           ToRaw("base_model.model.model.layers.0.q_proj.lora_B.weight",
                 at::ones({6, 2}))}));
  CliResult r =
      Tailorctl({"inspect", adapter, "--allowed-root", root, "-o", "json"});
  EXPECT_EQ(r.code, 5) << r.err;
  EXPECT_TRUE(absl::StrContains(r.err, "adapter_config.json")) << r.err;
  EXPECT_TRUE(absl::StrContains(r.err, "outside the allowed roots")) << r.err;
  // With the outside directory allowed too, the same adapter is read.
  r = Tailorctl({"inspect", adapter, "--allowed-root", root, "--allowed-root",
                 outside, "-o", "json"});
  EXPECT_EQ(r.code, 0) << r.err;
}

TEST_F(InspectCliTest, ErrorsHaveDistinctExitCodes) {
  const std::string bad = dir_.Join("bad.safetensors");
  WriteFileOrDie(bad, tailor::testing::AssembleSafetensors("[1]", ""));
  CliResult invalid = Tailorctl({"inspect", bad});
  EXPECT_EQ(invalid.code, 3);
  EXPECT_TRUE(absl::StrContains(invalid.err, bad)) << invalid.err;
  EXPECT_TRUE(invalid.out.empty());

  CliResult missing = Tailorctl({"inspect", dir_.Join("nope")});
  EXPECT_EQ(missing.code, 4) << missing.err;

  const std::string root = MakeDir("root");
  CliResult denied = Tailorctl({"inspect", bad, "--allowed-root", root});
  EXPECT_EQ(denied.code, 5) << denied.err;
  EXPECT_TRUE(absl::StrContains(denied.err, "outside")) << denied.err;

  CliResult scheme = Tailorctl({"inspect", "gs://bucket/model"});
  EXPECT_EQ(scheme.code, 3) << scheme.err;
  EXPECT_TRUE(absl::StrContains(scheme.err, "unsupported scheme"));
  // Issue #16: once --allowed-root is given, a remote URI needs a remote
  // root (without any, tailorctl admits every URI; the s3 end-to-end test
  // reads through the real backend).
  CliResult no_root =
      Tailorctl({"inspect", "s3://bucket/model", "--allowed-root", root});
  EXPECT_EQ(no_root.code, 5) << no_root.err;
  EXPECT_TRUE(absl::StrContains(no_root.err, "outside the allowed roots"))
      << no_root.err;
  CliResult other_prefix = Tailorctl(
      {"inspect", "s3://bucket/model", "--allowed-root", "s3://bucket/mod/"});
  EXPECT_EQ(other_prefix.code, 5) << other_prefix.err;

  WriteFileOrDie(dir_.Join("pytorch_model.bin"), "\x80\x02");
  CliResult pickle = Tailorctl({"inspect", dir_.Join("pytorch_model.bin")});
  EXPECT_EQ(pickle.code, 3);
  EXPECT_TRUE(absl::StrContains(pickle.err, "execute arbitrary code"));

  EXPECT_EQ(Tailorctl({"inspect"}).code, 2);
  EXPECT_EQ(Tailorctl({"inspect", bad, "--output", "xml"}).code, 2);
  EXPECT_EQ(Tailorctl({"frobnicate"}).code, 2);
  CliResult help = Tailorctl({"--help"});
  EXPECT_EQ(help.code, 0);
  EXPECT_TRUE(absl::StrContains(help.out, "Exit codes")) << help.out;
  // Issue #16: every command that reads or writes checkpoints has the
  // remote-storage flags; the writing ones a scratch directory.
  for (const char* cmd : {"inspect", "fuse", "apply-patch", "calibrate"}) {
    CliResult h = Tailorctl({cmd, "--help"});
    EXPECT_EQ(h.code, 0) << cmd;
    for (const char* flag :
         {"--ca-file", "--cache-dir", "--cache-bytes", "--allowed-root"}) {
      EXPECT_TRUE(absl::StrContains(h.out, flag)) << cmd << " " << flag;
    }
    // calibrate writes its file to s3:// through the scratch directory too.
    const bool writes = std::string(cmd) != "inspect";
    EXPECT_EQ(absl::StrContains(h.out, "--scratch-dir"), writes) << cmd;
  }
  EXPECT_EQ(Tailorctl({"inspect", bad, "--cache-bytes", "0"}).code, 2);
}

}  // namespace
}  // namespace tailor
