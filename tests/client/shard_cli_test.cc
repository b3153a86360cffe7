// The sharding flags of `tailorctl fuse --local` and `tailorctl assemble`
// (issue #20): errors name the flag or the variable; a shard dir of a
// scheme that cannot hold bundles is refused; the demo job, and Model
// Tailor with Hessians, TIES and a two-task stitch, sharded in three
// tailorctl processes running in parallel and assembled give the single
// run's fused checkpoint, patches and report (but for timings) byte for
// byte; a shard process killed (SIGKILL) and run again writes the same
// bundle.

#include <fcntl.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <spawn.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "fusion/shard_plan.h"
#include "nlohmann/json.hpp"
#include "testing/shard_inputs.h"
#include "testing/test_util.h"
#include "util/file_util.h"

namespace tailor {
namespace {

using ::tailor::testing::CliResult;
using ::tailor::testing::ExpectSameFiles;
using ::tailor::testing::ReadFileOrDie;
using ::tailor::testing::RunTailorctl;
using ::tailor::testing::TempDir;
using ::tailor::testing::WithoutRunFacts;

extern "C" char** environ;

class ShardCliTest : public ::testing::Test {
 protected:
  // The demo job (tests/CMakeLists.txt generates it in the build tree).
  std::vector<std::string> Job(const std::string& out) {
    const std::string demo =
        JoinPath(Dirname(std::getenv("TAILORCTL")), "../demo");
    return {"--pretrained",
            demo + "/tiny-llama",
            "--finetuned",
            demo + "/tiny-llama-lora",
            "--hessians",
            demo + "/tiny-llama-lora.hessians.safetensors",
            "--out",
            out + "/out",
            "--patch-out",
            out + "/p.safetensors",
            "-q"};
  }
  CliResult Tailorctl(std::vector<std::string> head,
                      const std::vector<std::string>& job) {
    head.insert(head.end(), job.begin(), job.end());
    return RunTailorctl(head, dir_.path());
  }
  TempDir dir_;
};

TEST_F(ShardCliTest, ThreeShardProcessesAndAssembleEqualASingleRun) {
  ASSERT_EQ(Tailorctl({"fuse", "--local"}, Job(dir_.Join("single"))).code, 0);
  const std::string shards = dir_.Join("shards");
  for (const char* i : {"0", "1", "2"}) {
    CliResult r = Tailorctl({"fuse", "--local", "--shard", i, "--shards", "3",
                             "--shard-dir", shards},
                            Job(dir_.Join("asm")));
    ASSERT_EQ(r.code, 0) << r.err;
    EXPECT_TRUE(absl::StrContains(r.out, "shard ")) << r.out;
    EXPECT_FALSE(PathExists(dir_.Join("asm/out")));
  }
  CliResult r = Tailorctl({"assemble", "--shards", "3", "--from", shards},
                          Job(dir_.Join("asm")));
  ASSERT_EQ(r.code, 0) << r.err;
  ExpectSameFiles(dir_.Join("single/out"), dir_.Join("asm/out"));
  EXPECT_EQ(ReadFileOrDie(dir_.Join("single/p.safetensors")),
            ReadFileOrDie(dir_.Join("asm/p.safetensors")));
}

TEST_F(ShardCliTest, FlagErrorsNameTheFlag) {
  const std::vector<std::string> job = Job(dir_.Join("o"));
  CliResult r = Tailorctl({"fuse", "--local", "--shard", "3", "--shards", "3",
                           "--shard-dir", dir_.Join("s")},
                          job);
  EXPECT_NE(r.code, 0);
  EXPECT_TRUE(absl::StrContains(r.err, "--shard: must be in 0..2")) << r.err;
  r = Tailorctl(
      {"fuse", "--local", "--shard", "1", "--shard-dir", dir_.Join("s")}, job);
  EXPECT_TRUE(absl::StrContains(r.err, "--shards: required")) << r.err;
  r = Tailorctl({"fuse", "--local", "--shard", "1", "--shards", "3"}, job);
  EXPECT_TRUE(absl::StrContains(r.err, "--shard-dir: required")) << r.err;
  ::unsetenv("JOB_COMPLETION_INDEX");
  r = Tailorctl(
      {"fuse", "--local", "--shards", "3", "--shard-dir", dir_.Join("s")}, job);
  EXPECT_TRUE(absl::StrContains(r.err, "$JOB_COMPLETION_INDEX")) << r.err;
  ::setenv("JOB_COMPLETION_INDEX", "7", 1);
  r = Tailorctl(
      {"fuse", "--local", "--shards", "3", "--shard-dir", dir_.Join("s")}, job);
  ::unsetenv("JOB_COMPLETION_INDEX");
  EXPECT_TRUE(absl::StrContains(r.err, "$JOB_COMPLETION_INDEX: must be in"))
      << r.err;
  // Bundles need a store that can be listed and written (s3://).
  r = Tailorctl({"fuse", "--local", "--shard", "0", "--shards", "3",
                 "--shard-dir", "https://example.com/shards/"},
                job);
  EXPECT_NE(r.code, 0);
  EXPECT_TRUE(absl::StrContains(r.err, "give an s3:// prefix")) << r.err;
  r = Tailorctl({"assemble", "--shards", "3", "--from", "gs://b/shards/"}, job);
  EXPECT_NE(r.code, 0);
  EXPECT_TRUE(absl::StrContains(r.err, "--from")) << r.err;
  r = Tailorctl({"assemble", "--shards", "3", "--from", dir_.Join("none")},
                job);
  EXPECT_NE(r.code, 0);
  EXPECT_FALSE(PathExists(dir_.Join("o/out")));
}

// Starts $TAILORCTL with `args` (stdout and stderr to `log`.out, .err),
// without waiting; returns its pid (or -1).
pid_t StartTailorctl(const std::vector<std::string>& args,
                     const std::string& log) {
  std::vector<std::string> argv = {std::getenv("TAILORCTL")};
  argv.insert(argv.end(), args.begin(), args.end());
  std::vector<char*> ptrs;
  for (std::string& a : argv) ptrs.push_back(a.data());
  ptrs.push_back(nullptr);
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_addopen(&actions, 1, (log + ".out").c_str(),
                                   O_WRONLY | O_CREAT | O_TRUNC, 0644);
  posix_spawn_file_actions_addopen(&actions, 2, (log + ".err").c_str(),
                                   O_WRONLY | O_CREAT | O_TRUNC, 0644);
  pid_t pid = -1;
  if (posix_spawn(&pid, ptrs[0], &actions, nullptr, ptrs.data(), environ) !=
      0) {
    pid = -1;
  }
  posix_spawn_file_actions_destroy(&actions);
  return pid;
}

// The exit status of `pid`, or -(the signal) that ended it.
int WaitFor(pid_t pid) {
  int status = 0;
  while (::waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  if (WIFEXITED(status)) return WEXITSTATUS(status);
  return WIFSIGNALED(status) ? -WTERMSIG(status) : -1000;
}

// Sharding as processes (issue #20's tests): the job of each case at fixed
// output paths, run once whole, then as three `fuse --local --shard I
// --shards 3` processes in parallel plus `assemble` at the same paths.
class ShardProcessTest : public ::testing::Test {
 protected:
  void SetUp() override {
    in_ = ::tailor::testing::WriteShardInputs(dir_);
    shards_ = dir_.Join("shards");
  }

  // `head` followed by the output flags (--out, --report, with `patch`
  // --patch-out) and the run flags.
  std::vector<std::string> WithOutputs(std::vector<std::string> head,
                                       bool patch) const {
    for (const std::string& a :
         {std::string("--out"), dir_.Join("out"), std::string("--report"),
          dir_.Join("report.json"), std::string("--device"), std::string("cpu"),
          std::string("-q")}) {
      head.push_back(a);
    }
    if (patch) {
      head.push_back("--patch-out");
      head.push_back(dir_.Join("p.safetensors"));
    }
    return head;
  }

  // Model Tailor with Hessians over two tasks: fused checkpoint, stitched
  // patch, per-task patches, report.
  std::vector<std::string> TailorJob() const {
    return WithOutputs(
        {"--pretrained", in_.base, "--finetuned", in_.finetuned[0],
         "--finetuned", in_.finetuned[1], "--hessians", in_.hessians[0],
         "--hessians", in_.hessians[1], "--label", "t0", "--label", "t1",
         "--keep", "0.2"},
        /*patch=*/true);
  }

  // The outputs a job writes (TailorJob's; Outputs() of the others).
  std::vector<std::string> Outputs(bool patches, bool task_patches) const {
    std::vector<std::string> files = {dir_.Join("out"),
                                      dir_.Join("report.json")};
    if (patches) files.push_back(dir_.Join("p.safetensors"));
    if (task_patches) {
      files.push_back(dir_.Join("p.t0.safetensors"));
      files.push_back(dir_.Join("p.t1.safetensors"));
    }
    return files;
  }

  CliResult Fuse(const std::vector<std::string>& job,
                 std::vector<std::string> head = {"fuse", "--local"}) {
    head.insert(head.end(), job.begin(), job.end());
    return RunTailorctl(head, dir_.path());
  }

  // Shard `i` of 3's arguments.
  std::vector<std::string> ShardArgs(const std::vector<std::string>& job, int i,
                                     const std::string& shard_dir) {
    std::vector<std::string> args = {
        "fuse",     "--local", "--shard",     std::to_string(i),
        "--shards", "3",       "--shard-dir", shard_dir};
    args.insert(args.end(), job.begin(), job.end());
    return args;
  }

  // The single run, then the three shard processes (in parallel) and
  // assemble: the same bytes and the same report but for the run facts.
  void ExpectShardedEqualsSingle(const std::vector<std::string>& job,
                                 const std::vector<std::string>& outputs) {
    CliResult r = Fuse(job);
    ASSERT_EQ(r.code, 0) << r.err;
    for (const std::string& f : outputs) {
      ASSERT_TRUE(PathExists(f)) << f;
      ASSERT_EQ(std::rename(f.c_str(), (f + ".single").c_str()), 0) << f;
    }
    std::vector<pid_t> pids;
    for (int i = 0; i < 3; ++i) {
      pids.push_back(StartTailorctl(ShardArgs(job, i, shards_),
                                    dir_.Join(absl::StrCat("shard", i))));
      ASSERT_GT(pids.back(), 0);
    }
    for (int i = 0; i < 3; ++i) {
      EXPECT_EQ(WaitFor(pids[i]), 0)
          << ReadFileOrDie(dir_.Join(absl::StrCat("shard", i, ".err")));
    }
    for (const std::string& f : outputs) EXPECT_FALSE(PathExists(f)) << f;
    r = Fuse(job, {"assemble", "--shards", "3", "--from", shards_});
    ASSERT_EQ(r.code, 0) << r.err;
    ExpectSameFiles(dir_.Join("out.single"), dir_.Join("out"));
    for (const std::string& f : outputs) {
      if (f == dir_.Join("out")) continue;
      if (f == dir_.Join("report.json")) {
        EXPECT_EQ(WithoutRunFacts(nlohmann::json::parse(ReadFileOrDie(f))),
                  WithoutRunFacts(
                      nlohmann::json::parse(ReadFileOrDie(f + ".single"))));
        continue;
      }
      EXPECT_EQ(ReadFileOrDie(f + ".single"), ReadFileOrDie(f)) << f;
    }
  }

  ::tailor::testing::ShardInputs in_;
  TempDir dir_;
  std::string shards_;
};

TEST_F(ShardProcessTest, TailorWithHessians) {
  ExpectShardedEqualsSingle(TailorJob(), Outputs(true, true));
}

TEST_F(ShardProcessTest, Ties) {
  const std::vector<std::string> job = WithOutputs(
      {"--pretrained", in_.base, "--finetuned", in_.finetuned[0], "--finetuned",
       in_.finetuned[1], "--method", "ties", "--density", "0.3"},
      /*patch=*/false);
  ExpectShardedEqualsSingle(job, Outputs(false, false));
}

TEST_F(ShardProcessTest, TwoTaskStitchOfPatches) {
  // Per-task patches of an earlier job, stitched.
  CliResult r = Fuse(TailorJob());
  ASSERT_EQ(r.code, 0) << r.err;
  for (int t = 0; t < 2; ++t) {
    const std::string from = dir_.Join(absl::StrCat("p.t", t, ".safetensors"));
    const std::string to = dir_.Join(absl::StrCat("task", t, ".safetensors"));
    ASSERT_EQ(std::rename(from.c_str(), to.c_str()), 0);
  }
  for (const std::string& f : Outputs(true, false)) {
    ASSERT_TRUE(RemoveAll(f).ok());
  }
  const std::vector<std::string> job = WithOutputs(
      {"--pretrained", in_.base, "--patch", dir_.Join("task0.safetensors"),
       "--patch", dir_.Join("task1.safetensors")},
      /*patch=*/true);
  ExpectShardedEqualsSingle(job, Outputs(true, false));
}

// A shard process killed (SIGKILL) midway and run again writes the bundle
// an uninterrupted run writes, reusing its journal. Larger inputs and one
// worker so that the kill lands between two tensors' journal entries.
TEST(ShardKillTest, KilledShardRunAgainWritesTheSameBundle) {
  TempDir dir;
  const ::tailor::testing::ShardInputs in =
      ::tailor::testing::WriteShardInputs(dir, 96, 160, 12);
  const std::vector<std::string> job = {"--pretrained",
                                        in.base,
                                        "--finetuned",
                                        in.finetuned[0],
                                        "--finetuned",
                                        in.finetuned[1],
                                        "--hessians",
                                        in.hessians[0],
                                        "--hessians",
                                        in.hessians[1],
                                        "--keep",
                                        "0.2",
                                        "--out",
                                        dir.Join("out"),
                                        "--patch-out",
                                        dir.Join("p.safetensors"),
                                        "--device",
                                        "cpu",
                                        "--workers",
                                        "1",
                                        "-q"};
  auto args = [&](const std::string& shard_dir) {
    std::vector<std::string> a = {"fuse",        "--local",  "--shard",
                                  "0",           "--shards", "3",
                                  "--shard-dir", shard_dir};
    a.insert(a.end(), job.begin(), job.end());
    return a;
  };
  CliResult r = RunTailorctl(args(dir.Join("ref")), dir.path());
  ASSERT_EQ(r.code, 0) << r.err;
  const std::string shards = dir.Join("shards");
  const std::string journal = ShardJournalDir(shards, 0, 3);
  bool killed = false;
  for (int attempt = 0; attempt < 5 && !killed; ++attempt) {
    ASSERT_TRUE(RemoveAll(shards).ok());
    const pid_t pid = StartTailorctl(args(shards), dir.Join("killed"));
    ASSERT_GT(pid, 0);
    // Killed once its journal holds a first entry (generous deadline).
    const auto deadline =
        std::chrono::steady_clock::now() + std::chrono::seconds(120);
    for (;;) {
      auto names = ListDirectory(journal);
      bool entry = false;
      if (names.ok()) {
        for (const std::string& n : *names) {
          entry = entry || (absl::EndsWith(n, ".safetensors") && n[0] != '.');
        }
      }
      if (entry || std::chrono::steady_clock::now() > deadline) break;
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
    ::kill(pid, SIGKILL);
    killed = WaitFor(pid) == -SIGKILL;
  }
  ASSERT_TRUE(killed) << "the shard always finished before it was killed";
  EXPECT_FALSE(PathExists(ShardBundleDir(shards, 0, 3)));
  r = RunTailorctl(args(shards), dir.path());
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_FALSE(absl::StrContains(r.out, "(0 resumed)")) << r.out;
  ExpectSameFiles(ShardBundleDir(dir.Join("ref"), 0, 3),
                  ShardBundleDir(shards, 0, 3));
}

}  // namespace
}  // namespace tailor
