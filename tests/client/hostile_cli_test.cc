// Issue #10 through tailorctl as a user runs it: hostile filters (point 6)
// and FIFOs among the inputs (point 11) end in clear errors, never a crash
// (rc 139) or a hang. Each run is under timeout(1), so a regression fails
// instead of hanging the suite.

#include <ATen/ATen.h>
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <sys/wait.h>

#include <cstdlib>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "testing/test_util.h"
#include "util/file_util.h"

namespace tailor {
namespace {

using ::tailor::testing::ReadFileOrDie;
using ::tailor::testing::SerializeSafetensors;
using ::tailor::testing::TempDir;
using ::tailor::testing::ToRaw;
using ::tailor::testing::WriteFileOrDie;

std::string ShellQuote(const std::string& s) {
  std::string out = "'";
  for (char c : s) {
    if (c == '\'') {
      out += "'\\''";
    } else {
      out += c;
    }
  }
  return out + "'";
}

struct Result {
  int code;  // 124: timed out; 128 + N: killed by signal N
  std::string err;
};

class HostileCliTest : public ::testing::Test {
 protected:
  void SetUp() override {
    at::manual_seed(3);
    base_ = Dir("base");
    ft_ = Dir("ft");
    at::Tensor w = at::randn({8, 8});
    WriteFileOrDie(base_ + "/model.safetensors",
                   SerializeSafetensors({ToRaw("m.q.weight", w)}));
    WriteFileOrDie(ft_ + "/model.safetensors",
                   SerializeSafetensors({ToRaw("m.q.weight", w + 0.1)}));
  }

  std::string Dir(const std::string& name) {
    std::string p = tmp_.Join(name);
    ::mkdir(p.c_str(), 0755);
    return p;
  }

  // tailorctl `args` under `timeout -k 10 120`.
  Result Tailorctl(const std::vector<std::string>& args) {
    const char* bin = std::getenv("TAILORCTL");
    EXPECT_NE(bin, nullptr) << "run through ctest";
    if (bin == nullptr) return {-1, ""};
    std::string cmd = absl::StrCat("timeout -k 10 120 ", ShellQuote(bin));
    for (const auto& a : args) absl::StrAppend(&cmd, " ", ShellQuote(a));
    const std::string err = tmp_.Join(".stderr");
    absl::StrAppend(&cmd, " >/dev/null 2>", ShellQuote(err), " </dev/null");
    const int status = std::system(cmd.c_str());
    return {WIFEXITED(status) ? WEXITSTATUS(status) : -1, ReadFileOrDie(err)};
  }

  TempDir tmp_;
  std::string base_, ft_;
};

TEST_F(HostileCliTest, NestedIncludeIsInvalidInputNotACrash) {
  const std::string nested =
      absl::StrCat(std::string(20000, '('), "m", std::string(20000, ')'));
  Result r = Tailorctl({"fuse", "--local", "--pretrained", base_, "--finetuned",
                        ft_, "--method", "task_arithmetic", "--include", nested,
                        "--report", tmp_.Join("r.json")});
  EXPECT_EQ(r.code, 3) << r.err.substr(0, 500);
  EXPECT_TRUE(absl::StrContains(r.err, "include[0]")) << r.err.substr(0, 500);
  EXPECT_LT(r.err.size(), 1000u);
  // submit validates the job file before it connects.
  const std::string job = tmp_.Join("job.yaml");
  WriteFileOrDie(job, absl::StrCat("pretrained: ", base_, "\nfinetuned: ", ft_,
                                   "\nreport: ", tmp_.Join("r2.json"),
                                   "\ninclude: ['", nested, "']\n"));
  r = Tailorctl({"submit", "-f", job, "--server", "127.0.0.1:1"});
  EXPECT_EQ(r.code, 3) << r.err.substr(0, 500);
  EXPECT_TRUE(absl::StrContains(r.err, "include[0]")) << r.err.substr(0, 500);
  // A pathological but valid pattern runs to the end.
  r = Tailorctl({"fuse", "--local", "--pretrained", base_, "--finetuned", ft_,
                 "--method", "task_arithmetic", "--include", "^(.|.)*X$",
                 "--report", tmp_.Join("r3.json"), "-q"});
  EXPECT_EQ(r.code, 0) << r.err;
}

TEST_F(HostileCliTest, FifosAreRefusedByInspectAndFuse) {
  const std::string fifo = tmp_.Join("model.safetensors");
  ASSERT_EQ(::mkfifo(fifo.c_str(), 0644), 0);
  Result r = Tailorctl({"inspect", fifo});
  EXPECT_EQ(r.code, 3) << r.err;
  EXPECT_TRUE(absl::StrContains(r.err, "is not a regular file (FIFO)"))
      << r.err;

  // A FIFO shard inside a checkpoint directory.
  const std::string dir = Dir("fifo-ckpt");
  ASSERT_EQ(::mkfifo((dir + "/model.safetensors").c_str(), 0644), 0);
  r = Tailorctl({"inspect", dir});
  EXPECT_NE(r.code, 0);
  EXPECT_NE(r.code, 124) << "inspect hung on a FIFO";

  // A FIFO as an adapter config.
  const std::string adapter = Dir("adapter");
  ASSERT_EQ(::mkfifo((adapter + "/adapter_config.json").c_str(), 0644), 0);
  r = Tailorctl({"inspect", adapter, "--base", base_});
  EXPECT_EQ(r.code, 3) << r.err;
  EXPECT_TRUE(absl::StrContains(r.err, "(FIFO)")) << r.err;

  // fuse --local with a FIFO as the fine-tuned file, the calibration file
  // and the patch.
  r = Tailorctl({"fuse", "--local", "--pretrained", base_, "--finetuned", fifo,
                 "--report", tmp_.Join("f1.json"), "-q"});
  EXPECT_EQ(r.code, 3) << r.err;
  EXPECT_TRUE(absl::StrContains(r.err, "(FIFO)")) << r.err;
  const std::string h = tmp_.Join("h.safetensors");
  ASSERT_EQ(::mkfifo(h.c_str(), 0644), 0);
  r = Tailorctl({"fuse", "--local", "--pretrained", base_, "--finetuned", ft_,
                 "--hessians", h, "--report", tmp_.Join("f2.json"), "-q"});
  EXPECT_EQ(r.code, 3) << r.err;
  EXPECT_TRUE(absl::StrContains(r.err, "(FIFO)")) << r.err;
  r = Tailorctl({"fuse", "--local", "--pretrained", base_, "--patch", h,
                 "--report", tmp_.Join("f3.json"), "-q"});
  EXPECT_EQ(r.code, 3) << r.err;
  EXPECT_TRUE(absl::StrContains(r.err, "(FIFO)")) << r.err;
  r = Tailorctl({"apply-patch", "--pretrained", base_, "--patch", h, "--out",
                 tmp_.Join("applied")});
  EXPECT_EQ(r.code, 3) << r.err;
  EXPECT_TRUE(absl::StrContains(r.err, "(FIFO)")) << r.err;
}

}  // namespace
}  // namespace tailor
