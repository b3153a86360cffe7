// `tailorctl calibrate` and its allowed roots (issue #14 point 7): the
// model's config.json, the token data and the output are opened beneath
// the --allowed-root that holds them, so a symlink leading out of the root
// is refused (exit 5, PERMISSION_DENIED naming the path) while symlinks
// inside it work. Runs the real binary.

#include <ATen/ATen.h>
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "model/llama.h"
#include "model/tiny_llama.h"
#include "testing/test_util.h"
#include "util/file_util.h"

namespace tailor {
namespace {

using ::tailor::testing::CliResult;
using ::tailor::testing::ReadFileOrDie;
using ::tailor::testing::RunTailorctl;
using ::tailor::testing::SerializeSafetensors;
using ::tailor::testing::TempDir;
using ::tailor::testing::ToRaw;
using ::tailor::testing::WriteFileOrDie;

std::string Text() {
  std::string text;
  for (int i = 0; i < 40; ++i) {
    text += "calibration text, line " + std::to_string(i) + "\n";
  }
  return text;
}

class CalibrateRootsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    root_ = dir_.Join("root");
    outside_ = dir_.Join("outside");
    ASSERT_EQ(::mkdir(root_.c_str(), 0755), 0);
    ASSERT_EQ(::mkdir(outside_.c_str(), 0755), 0);
    ASSERT_EQ(::mkdir((outside_ + "/outdir").c_str(), 0755), 0);
    absl::StatusOr<LlamaModel> model = LlamaModel::Init(
        ::tailor::testing::TinyByteLlama(1), 9, at::kFloat, at::kCPU);
    ASSERT_TRUE(model.ok()) << model.status();
    ASSERT_TRUE(model->Save(root_ + "/model").ok());
    WriteFileOrDie(root_ + "/data.txt", Text());
    WriteFileOrDie(outside_ + "/data.txt", Text());
    WriteFileOrDie(outside_ + "/ids.safetensors",
                   SerializeSafetensors({ToRaw(
                       "input_ids", at::arange(64, at::kLong).view({2, 32}))}));
    WriteFileOrDie(outside_ + "/config.json",
                   ReadFileOrDie(root_ + "/model/config.json"));
  }

  // `tailorctl calibrate` with --allowed-root root_ and small windows.
  CliResult Calibrate(const std::string& model, const std::string& data,
                      const std::string& out) {
    return RunTailorctl({"calibrate", "--model", model, "--data", data, "--out",
                         out, "--samples", "2", "--seq-len", "16", "--device",
                         "cpu", "--allowed-root", root_, "-q"},
                        dir_.path());
  }

  void Link(const std::string& target, const std::string& link) {
    ASSERT_EQ(::symlink(target.c_str(), link.c_str()), 0) << link;
  }

  // A model directory in the root whose weights are the model's and whose
  // config.json is `config` (a symlink to it).
  void ModelWithConfigLink(const std::string& name, const std::string& config) {
    const std::string d = root_ + "/" + name;
    ASSERT_EQ(::mkdir(d.c_str(), 0755), 0);
    WriteFileOrDie(d + "/model.safetensors",
                   ReadFileOrDie(root_ + "/model/model.safetensors"));
    Link(config, d + "/config.json");
  }

  TempDir dir_;
  std::string root_, outside_;
};

TEST_F(CalibrateRootsTest, TokenFileSymlinkedOutTheRootIsRefused) {
  Link(outside_ + "/data.txt", root_ + "/data-link.txt");
  CliResult r = Calibrate(root_ + "/model", root_ + "/data-link.txt",
                          root_ + "/h.safetensors");
  EXPECT_EQ(r.code, 5) << r.err;
  EXPECT_TRUE(absl::StrContains(r.err, "data-link.txt")) << r.err;
  EXPECT_TRUE(absl::StrContains(r.err, "outside the allowed roots")) << r.err;
  Link(outside_ + "/ids.safetensors", root_ + "/ids.safetensors");
  r = Calibrate(root_ + "/model", root_ + "/ids.safetensors",
                root_ + "/h.safetensors");
  EXPECT_EQ(r.code, 5) << r.err;
  EXPECT_TRUE(absl::StrContains(r.err, "ids.safetensors")) << r.err;
  EXPECT_FALSE(PathExists(root_ + "/h.safetensors"));
}

TEST_F(CalibrateRootsTest, ConfigSymlinkedOutTheRootIsRefused) {
  // The model directory is inside the root; only its config.json leads out.
  ModelWithConfigLink("model-out", outside_ + "/config.json");
  CliResult r = Calibrate(root_ + "/model-out", root_ + "/data.txt",
                          root_ + "/h.safetensors");
  EXPECT_EQ(r.code, 5) << r.err;
  EXPECT_TRUE(absl::StrContains(r.err, "config.json")) << r.err;
  EXPECT_TRUE(absl::StrContains(r.err, "outside the allowed roots")) << r.err;
  EXPECT_FALSE(PathExists(root_ + "/h.safetensors"));
}

TEST_F(CalibrateRootsTest, OutputThroughASymlinkOutTheRootIsRefused) {
  Link(outside_ + "/outdir", root_ + "/out-link");
  CliResult r = Calibrate(root_ + "/model", root_ + "/data.txt",
                          root_ + "/out-link/h.safetensors");
  EXPECT_EQ(r.code, 5) << r.err;
  EXPECT_TRUE(absl::StrContains(r.err, "out-link/h.safetensors")) << r.err;
  auto left = ListDirectory(outside_ + "/outdir");
  ASSERT_TRUE(left.ok());
  EXPECT_TRUE(left->empty()) << (*left)[0];
}

TEST_F(CalibrateRootsTest, SymlinksInsideTheRootWork) {
  Link("data.txt", root_ + "/data-in.txt");
  ModelWithConfigLink("model-in", "../model/config.json");
  ASSERT_EQ(::mkdir((root_ + "/outs").c_str(), 0755), 0);
  Link(root_ + "/outs", root_ + "/out-in");
  CliResult r = Calibrate(root_ + "/model-in", root_ + "/data-in.txt",
                          root_ + "/out-in/h.safetensors");
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_TRUE(IsRegularFile(root_ + "/outs/h.safetensors"));
  // Only the output is left: the staging went with the writer.
  auto names = ListDirectory(root_ + "/outs");
  ASSERT_TRUE(names.ok());
  EXPECT_EQ(*names, std::vector<std::string>{"h.safetensors"});
}

}  // namespace
}  // namespace tailor
