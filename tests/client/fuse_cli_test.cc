// Runs `tailorctl fuse --local` and `tailorctl apply-patch` as a user would.

#include <ATen/ATen.h>
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <sys/wait.h>

#include <cstdlib>
#include <tuple>
#include <utility>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "nlohmann/json.hpp"
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

class FuseCliTest : public ::testing::Test {
 protected:
  void SetUp() override {
    at::manual_seed(5);
    at::Tensor up = at::randn({12, 8}), down = at::randn({8, 12}),
               norm = at::ones({8});
    base_ = Dir("base");
    ft_ = Dir("ft");
    WriteFileOrDie(
        base_ + "/model.safetensors",
        SerializeSafetensors({ToRaw("m.up.weight", up.to(at::kBFloat16)),
                              ToRaw("m.down.weight", down.to(at::kBFloat16)),
                              ToRaw("m.norm.weight", norm.to(at::kBFloat16))}));
    WriteFileOrDie(
        ft_ + "/model.safetensors",
        SerializeSafetensors(
            {ToRaw("m.up.weight",
                   (up + 0.3 * at::randn({12, 8})).to(at::kBFloat16)),
             ToRaw("m.down.weight",
                   (down + 0.3 * at::randn({8, 12})).to(at::kBFloat16)),
             ToRaw("m.norm.weight",
                   (norm + 0.3 * at::randn({8})).to(at::kBFloat16))}));
    auto gram = [](int64_t c) {
      at::Tensor x = at::randn({64, c});
      return (2.0 / 64 * x.t().matmul(x)).contiguous();
    };
    hessians_ = tmp_.Join("h.safetensors");
    WriteFileOrDie(
        hessians_,
        SerializeSafetensors(
            {ToRaw("m.up.hessian", gram(8)), ToRaw("m.down.hessian", gram(12))},
            {{"format", "tailor-hessian/1"}, {"nsamples", "64"}}));
  }

  std::string Dir(const std::string& name) {
    std::string p = tmp_.Join(name);
    ::mkdir(p.c_str(), 0755);
    return p;
  }

  CliResult Tailorctl(const std::vector<std::string>& args) {
    return RunTailorctl(args, tmp_.path());
  }

  TempDir tmp_;
  std::string base_, ft_, hessians_;
};

TEST_F(FuseCliTest, FuseThenApplyPatchIsBitIdentical) {
  const std::string out = tmp_.Join("out"), patch = tmp_.Join("p.safetensors"),
                    report = tmp_.Join("r.json");
  CliResult r =
      Tailorctl({"fuse", "--local", "--pretrained", base_, "--finetuned", ft_,
                 "--hessians", hessians_, "--keep", "0.25", "--out", out,
                 "--patch-out", patch, "--report", report, "--device", "cpu"});
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_TRUE(absl::StrContains(r.out, "kept 50 of 200 entries")) << r.out;
  nlohmann::json rep = nlohmann::json::parse(ReadFileOrDie(report));
  EXPECT_EQ(rep["totals"]["kept"], 50);  // 24 + 24 + 2: round(0.25 * n)
  CliResult a = Tailorctl({"apply-patch", "--pretrained", base_, "--patch",
                           patch, "--out", tmp_.Join("again")});
  ASSERT_EQ(a.code, 0) << a.err;
  EXPECT_EQ(ReadFileOrDie(out + "/model.safetensors"),
            ReadFileOrDie(tmp_.Join("again") + "/model.safetensors"));
}

TEST_F(FuseCliTest, JobFileWithFlagOverrides) {
  const std::string job = tmp_.Join("job.yaml");
  WriteFileOrDie(
      job,
      absl::StrCat("pretrained: ", base_, "\n",
                   "tasks:\n  - label: code\n    finetuned: ", ft_,
                   "\n    hessians: ", hessians_, "\n    omega: 0.25\n",
                   "method: tailor\nkeep: 0.2\ncompensation: exact\n",
                   "block-size: 4\nreport: ", tmp_.Join("job.json"), "\n"));
  CliResult r =
      Tailorctl({"fuse", "--local", "-f", job, "--keep", "0.5", "-q"});
  ASSERT_EQ(r.code, 0) << r.err;
  nlohmann::json rep =
      nlohmann::json::parse(ReadFileOrDie(tmp_.Join("job.json")));
  EXPECT_EQ(rep["spec"]["keep"], 0.5);
  EXPECT_EQ(rep["spec"]["compensation"], "exact");
  EXPECT_EQ(rep["spec"]["block_size"], 4);
  EXPECT_EQ(rep["spec"]["tasks"][0]["label"], "code");
  EXPECT_EQ(rep["spec"]["tasks"][0]["omega"], 0.25);
  EXPECT_EQ(rep["totals"]["kept"], 100);
}

// Issue #19: `fuse -f` reads a mergekit config (mergekit's rules for ties)
// and `--weight` pairs with the tasks; bad values name the field.
TEST_F(FuseCliTest, MergekitConfigAndWeights) {
  const std::string yml = tmp_.Join("merge.yml");
  WriteFileOrDie(
      yml, absl::StrCat("merge_method: ties\nbase_model: ", base_,
                        "\nmodels:\n  - model: ", base_, "\n  - model: ", ft_,
                        "\n    parameters: {weight: 0.5, density: "
                        "0.3}\ndtype: bfloat16\n"));
  CliResult r = Tailorctl(
      {"fuse", "--local", "-q", "-f", yml, "--report", tmp_.Join("mk.json")});
  ASSERT_EQ(r.code, 0) << r.err;
  nlohmann::json rep =
      nlohmann::json::parse(ReadFileOrDie(tmp_.Join("mk.json")));
  EXPECT_EQ(rep["spec"]["method"], "ties");
  EXPECT_EQ(rep["spec"]["count_rule"], "floor");
  EXPECT_EQ(rep["spec"]["sign_cancel"], "positive");
  EXPECT_EQ(rep["spec"]["density"], 0.3);
  ASSERT_EQ(rep["spec"]["tasks"].size(), 1u);
  EXPECT_EQ(rep["spec"]["tasks"][0]["weight"], 0.5);

  r = Tailorctl({"fuse", "--local", "-q", "--pretrained", base_, "--finetuned",
                 ft_, "--method", "linear", "--weight", "2", "--report",
                 tmp_.Join("lin.json")});
  ASSERT_EQ(r.code, 0) << r.err;
  rep = nlohmann::json::parse(ReadFileOrDie(tmp_.Join("lin.json")));
  EXPECT_EQ(rep["spec"]["tasks"][0]["weight"], 2.0);
  r = Tailorctl({"fuse", "--local", "-q", "--pretrained", base_, "--finetuned",
                 ft_, "--method", "slerp", "--t", "2", "--report",
                 tmp_.Join("x.json")});
  EXPECT_NE(r.code, 0);
  EXPECT_TRUE(absl::StrContains(r.err, "t: must be in [0, 1]")) << r.err;
  r = Tailorctl({"fuse", "--local", "-q", "--pretrained", base_, "--finetuned",
                 ft_, "--weight", "1", "--weight", "2", "--report",
                 tmp_.Join("x.json")});
  EXPECT_NE(r.code, 0);
  EXPECT_TRUE(absl::StrContains(r.err, "weight: 2 given for 1 tasks")) << r.err;
}

// Issue #19 point 5: --variant authors-code sets its knobs unless given,
// keeps their count (int(n (1 - rho)) + 1 reverted per block) and is
// refused with what it does not support.
TEST_F(FuseCliTest, AuthorsCodeVariant) {
  const std::vector<std::string> job = {
      "fuse", "--local",    "-q",      "--pretrained", base_, "--finetuned",
      ft_,    "--hessians", hessians_, "--device",     "cpu"};
  auto with = [&](std::vector<std::string> extra) {
    std::vector<std::string> args = job;
    args.insert(args.end(), extra.begin(), extra.end());
    return Tailorctl(args);
  };
  CliResult r =
      with({"--variant", "authors-code", "--report", tmp_.Join("ac.json")});
  ASSERT_EQ(r.code, 0) << r.err;
  nlohmann::json rep =
      nlohmann::json::parse(ReadFileOrDie(tmp_.Join("ac.json")));
  EXPECT_EQ(rep["spec"]["variant"], "authors-code");
  EXPECT_EQ(rep["spec"]["omega"], 0.8);
  EXPECT_EQ(rep["spec"]["scope"], "block");
  EXPECT_EQ(rep["spec"]["normalize"], "zscore");
  EXPECT_EQ(rep["spec"]["dead_columns"], "select");
  // up and down (96 entries, one block each): 96 - (int(86.4) + 1) = 9
  // kept each (round(9.6) = 10 with the paper's rule); the norm (no
  // Hessian) round(0.8) = 1.
  EXPECT_EQ(rep["totals"]["kept"], 19);
  for (const auto& t : rep["tensors"]) {
    if (t["name"] == "m.norm.weight") continue;
    EXPECT_EQ(t["tasks"][0]["compensation"], "authors-code") << t.dump();
  }
  r = with({"--variant", "authors-code", "--omega", "0.4", "--report",
            tmp_.Join("ac2.json")});
  ASSERT_EQ(r.code, 0) << r.err;
  rep = nlohmann::json::parse(ReadFileOrDie(tmp_.Join("ac2.json")));
  EXPECT_EQ(rep["spec"]["omega"], 0.4);
  // Refused, naming the field and the rule.
  const std::pair<std::vector<std::string>, std::string> refused[] = {
      {{"--variant", "authors"},
       "variant must be one of paper|authors-code, not 'authors'"},
      {{"--variant", "authors-code", "--compensation", "exact"},
       "compensation must be sequential with variant authors-code"},
      {{"--variant", "authors-code", "--method", "ties"},
       "variant: authors-code is a variant of method tailor"}};
  for (const auto& [flags, message] : refused) {
    std::vector<std::string> extra = flags;
    extra.push_back("--report");
    extra.push_back(tmp_.Join("x.json"));
    r = with(extra);
    EXPECT_NE(r.code, 0) << message;
    EXPECT_TRUE(absl::StrContains(r.err, message)) << r.err;
  }
}

// Issue #17 point 2: relative paths in a job file are relative to the job
// file's directory, not to where tailorctl runs; point 1: the output's
// missing parent directories are created.
TEST_F(FuseCliTest, JobFilePathsAreRelativeToTheJobFile) {
  Dir("jobs");
  const std::string job = tmp_.Join("jobs/job.yaml");
  WriteFileOrDie(job,
                 "pretrained: ../base\n"
                 "tasks:\n  - finetuned: ./../ft\n    hessians: "
                 "../h.safetensors\n"
                 "keep: 0.25\ndevice: cpu\nout: out/fused\n"
                 "report: out/report.json\n");
  // The working directory (the test's) has no base/ft: resolving against it
  // would fail with NOT_FOUND.
  CliResult r = Tailorctl({"fuse", "--local", "-f", job, "-q"});
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_TRUE(IsRegularFile(tmp_.Join("jobs/out/fused/model.safetensors")));
  nlohmann::json rep =
      nlohmann::json::parse(ReadFileOrDie(tmp_.Join("jobs/out/report.json")));
  EXPECT_EQ(rep["spec"]["pretrained"], base_) << rep["spec"].dump();
  EXPECT_EQ(rep["spec"]["tasks"][0]["finetuned"], ft_) << rep["spec"].dump();
  EXPECT_FALSE(PathExists("out/fused"));
}

// Issue #17 point 1: `--out a/b/fused` with no a/ creates a/ and a/b/
// (exit 0, was 4); inside --allowed-root only, never through a symlink
// that leaves it; an existing output names --overwrite (point 6).
TEST_F(FuseCliTest, MissingOutputParentsAreCreatedInsideTheRoots) {
  const std::vector<std::string> common = {
      "fuse", "--local",        "--pretrained", base_,      "--finetuned",
      ft_,    "--keep",         "0.25",         "--device", "cpu",
      "-q",   "--allowed-root", tmp_.path()};
  std::vector<std::string> args = common;
  args.insert(args.end(), {"--out", tmp_.Join("new/sub/fused")});
  CliResult r = Tailorctl(args);
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_TRUE(IsRegularFile(tmp_.Join("new/sub/fused/model.safetensors")));

  CliResult again = Tailorctl(args);
  EXPECT_EQ(again.code, 3) << again.err;
  EXPECT_TRUE(absl::StrContains(again.err, "--overwrite")) << again.err;

  TempDir outside;
  ASSERT_EQ(::symlink(outside.path().c_str(), tmp_.Join("away").c_str()), 0);
  args = common;
  args.insert(args.end(), {"--out", tmp_.Join("away/made/fused")});
  CliResult escaped = Tailorctl(args);
  EXPECT_EQ(escaped.code, 5) << escaped.err;
  EXPECT_FALSE(PathExists(outside.path() + "/made"));
}

TEST_F(FuseCliTest, BadInputsExitWithCodes) {
  const std::string job = tmp_.Join("bad.yaml");
  WriteFileOrDie(
      job, absl::StrCat("pretrained: ", base_, "\nfinetuned: ", ft_,
                        "\nkeep_ratio: 0.1\nout: ", tmp_.Join("x"), "\n"));
  CliResult unknown = Tailorctl({"fuse", "--local", "-f", job});
  EXPECT_EQ(unknown.code, 3);
  EXPECT_TRUE(absl::StrContains(unknown.err, "keep_ratio")) << unknown.err;
  EXPECT_TRUE(absl::StrContains(unknown.err, job)) << unknown.err;

  EXPECT_EQ(Tailorctl({"fuse", "--pretrained", base_}).code, 2);  // no --local
  CliResult method =
      Tailorctl({"fuse", "--local", "--pretrained", base_, "--finetuned", ft_,
                 "--method", "average", "--out", tmp_.Join("y")});
  EXPECT_EQ(method.code, 3);
  EXPECT_TRUE(absl::StrContains(method.err, "tailor|magnitude")) << method.err;
  CliResult pairs =
      Tailorctl({"fuse", "--local", "--pretrained", base_, "--finetuned", ft_,
                 "--hessians", hessians_, "--hessians", hessians_, "--out",
                 tmp_.Join("z")});
  EXPECT_EQ(pairs.code, 3);
  EXPECT_TRUE(absl::StrContains(pairs.err, "pair")) << pairs.err;
  CliResult missing =
      Tailorctl({"fuse", "--local", "--pretrained", tmp_.Join("nope"),
                 "--finetuned", ft_, "--out", tmp_.Join("w")});
  EXPECT_EQ(missing.code, 4) << missing.err;
  CliResult denied =
      Tailorctl({"apply-patch", "--pretrained", base_, "--patch", job, "--out",
                 tmp_.Join("v"), "--allowed-root", ft_});
  EXPECT_EQ(denied.code, 5) << denied.err;
}

// Job files go YAML -> the spec's JSON form -> FusionSpec::FromJson (issue
// #13): the key table of fusion_spec.cc types each value, and the errors
// still name the file and the key. `submit` checks the file before it
// connects, so nothing here runs a fusion.
TEST_F(FuseCliTest, JobFileKeysAreTheSpecKeys) {
  auto submit = [&](const std::string& name, const std::string& body) {
    const std::string job = tmp_.Join(name);
    WriteFileOrDie(job, absl::StrCat("pretrained: ", base_, "\n", body));
    CliResult r = Tailorctl({"submit", "-f", job, "--server", "127.0.0.1:1"});
    return std::make_pair(job, r);
  };
  struct Case {
    std::string body;
    std::string expected;  // in stderr, after the file name
  };
  const std::string ft = absl::StrCat("finetuned: ", ft_, "\nreport: r.json\n");
  const Case cases[] = {
      {ft + "keep: lots\n", ": keep: must be a number, not 'lots'"},
      {ft + "float64: maybe\n",
       ": float64: must be true or false, not 'maybe'"},
      {ft + "threads: 4294967297\n", ": threads: must be an integer"},
      {ft + "seed: -1\n", ": seed: must be a non-negative integer"},
      {ft + "block-size: [4]\n", ": block_size: must be an integer"},
      {ft + "include: {a: 1}\n",
       ": include: must be a string or a list of strings"},
      {ft + "keep-ratio: 0.1\n",
       ": keep_ratio: unknown key (see tailorctl fuse --help)"},
      {ft + "keep: 0.1\nkeep: 0.2\n", ": keep: given twice"},
      {absl::StrCat("tasks:\n  - finetuned: ", ft_, "\n    density: 2\n",
                    "report: r.json\n"),
       ": tasks[0].density: unknown key (allowed: label, finetuned, patch, "
       "hessians, keep, omega, weight)"},
      {absl::StrCat("tasks:\n  - finetuned: ", ft_, "\n    omega: half\n",
                    "report: r.json\n"),
       ": tasks[0].omega: must be a number, not 'half'"},
      {"tasks: [x]\nreport: r.json\n", ": tasks[0]: must be a mapping"},
      {"tasks: x\nreport: r.json\n", ": tasks: must be a list"},
      {absl::StrCat(ft, "tasks:\n  - finetuned: ", ft_, "\n"),
       ": tasks: cannot be combined with top-level"},
      {absl::StrCat(ft, "labels: [a, b]\n"), ": labels: 2 given for 1 tasks"},
  };
  for (const Case& c : cases) {
    auto [job, r] = submit("bad.yaml", c.body);
    EXPECT_EQ(r.code, 3) << c.body << r.err;
    EXPECT_TRUE(absl::StrContains(r.err, job + c.expected)) << c.body << "\n"
                                                            << r.err;
  }
  // An enum's name is checked by the spec's parser (no file prefix, as
  // before), and so are the spec's rules (Validate).
  auto [job, r] = submit("method.yaml", ft + "method: average\n");
  EXPECT_EQ(r.code, 3) << r.err;
  EXPECT_TRUE(absl::StrContains(r.err, "tailor|magnitude")) << r.err;
  std::tie(job, r) = submit("keep.yaml", ft + "keep: 2\n");
  EXPECT_EQ(r.code, 3) << r.err;
  EXPECT_TRUE(absl::StrContains(r.err, "keep")) << r.err;
  // A valid file passes the checks: only the connection fails (not 3).
  std::tie(job, r) = submit(
      "ok.yaml",
      absl::StrCat(ft, "on-mismatch: copy_base\ninclude: '^m\\.'\n",
                   "seed: 18446744073709551615\nthreads: 2\nfloat64: true\n",
                   "overwrite: yes\nlabels: [code]\n"));
  EXPECT_NE(r.code, 3) << r.err;
  EXPECT_NE(r.code, 0) << r.err;
}

// Issue #12: `--workers` computes tensors at once with identical outputs;
// out of range it names the flag and its rule.
TEST_F(FuseCliTest, WorkersGiveIdenticalOutputsAndAreRangeChecked) {
  std::vector<std::string> outs;
  for (const char* workers : {"1", "3"}) {
    const std::string out = tmp_.Join(absl::StrCat("w", workers));
    CliResult r = Tailorctl({"fuse",
                             "--local",
                             "-q",
                             "--pretrained",
                             base_,
                             "--finetuned",
                             ft_,
                             "--hessians",
                             hessians_,
                             "--keep",
                             "0.25",
                             "--out",
                             out,
                             "--patch-out",
                             out + ".safetensors",
                             "--device",
                             "cpu",
                             "--threads",
                             "2",
                             "--workers",
                             workers});
    ASSERT_EQ(r.code, 0) << r.err;
    outs.push_back(out);
  }
  EXPECT_EQ(ReadFileOrDie(outs[0] + "/model.safetensors"),
            ReadFileOrDie(outs[1] + "/model.safetensors"));
  EXPECT_EQ(ReadFileOrDie(outs[0] + ".safetensors"),
            ReadFileOrDie(outs[1] + ".safetensors"));
  CliResult bad =
      Tailorctl({"fuse", "--local", "--pretrained", base_, "--finetuned", ft_,
                 "--out", tmp_.Join("bad-w"), "--workers", "300"});
  EXPECT_EQ(bad.code, 3) << bad.err;
  EXPECT_TRUE(absl::StrContains(bad.err, "--workers: must be in 0..256"))
      << bad.err;
  EXPECT_FALSE(PathExists(tmp_.Join("bad-w")));
}

}  // namespace
}  // namespace tailor
