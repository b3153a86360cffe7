// Issue #12: a job's tensors computed by several workers (RunOptions::
// workers) give byte-identical outputs, patches and reports to one worker's,
// with and without a device pool, and a job killed mid-way with two workers
// resumes from its journal byte-identically, as does one cancelled with two
// tensors in flight (which finish and are journalled before it returns).

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cstdio>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "fusion/fusion_job.h"
#include "io/checkpoint.h"
#include "jobs/device_pool.h"
#include "testing/test_util.h"
#include "two_task_fixture.h"
#include "util/file_util.h"

namespace tailor {
namespace {

using ::tailor::testing::RawTensor;
using ::tailor::testing::ReadFileOrDie;
using ::tailor::testing::SerializeSafetensors;
using ::tailor::testing::TempDir;
using ::tailor::testing::ToRaw;
using ::tailor::testing::WithoutRunFacts;
using ::tailor::testing::WriteFileOrDie;
using ::tailor::testing::WriteShardedCheckpoint;

constexpr int64_t kHidden = 24, kInter = 40;
constexpr int kLayers = 4;

// Counts events; SIGKILLs the process once `kill_after` tensors were fused.
class Recorder : public ProgressSink {
 public:
  explicit Recorder(int kill_after = -1) : kill_after_(kill_after) {}
  void OnEvent(const ProgressEvent& e) override {
    if (e.kind != ProgressEvent::Kind::kTensorDone) return;
    ++actions[e.action];
    ++devices[e.device];
    last_done = e.done;
    if (e.action == "fused" && actions["fused"] == kill_after_) {
      ::kill(::getpid(), SIGKILL);
    }
  }
  void OnExecutor(int in_flight, int queued) override {
    max_in_flight = std::max(max_in_flight, in_flight);
    (void)queued;
  }
  std::map<std::string, int> actions;
  std::map<std::string, int> devices;
  int64_t last_done = 0;
  int max_in_flight = 0;

 private:
  const int kill_after_;
};

// Cancels the job the first time the executor has two tensors computing
// (after at least `after` were fused), remembering how many had been fused
// then; counts events as Recorder does.
class Canceller : public Recorder {
 public:
  explicit Canceller(int after) : after_(after) {}
  void OnEvent(const ProgressEvent& e) override {
    Recorder::OnEvent(e);
    if (e.kind == ProgressEvent::Kind::kTensorDone) {
      fused_seen = actions["fused"];
    }
  }
  void OnExecutor(int in_flight, int queued) override {
    Recorder::OnExecutor(in_flight, queued);
    last_in_flight = in_flight;
    if (!cancel.load() && in_flight == 2 && fused_seen >= after_) {
      fused_at_cancel = fused_seen;
      cancel.store(true);
    }
  }
  std::atomic<bool> cancel{false};
  // Written under the job's lock (events), read under the executor's.
  std::atomic<int> fused_seen{0};
  int fused_at_cancel = -1;
  int last_in_flight = -1;

 private:
  const int after_;
};

class FusionWorkersTest : public ::tailor::testing::TwoTaskTest {
 protected:
  void SetUp() override {
    at::manual_seed(11);
    std::map<std::string, at::Tensor> pre;
    for (int l = 0; l < kLayers; ++l) {
      const std::string p = absl::StrCat("model.layers.", l, ".");
      pre[p + "self_attn.q_proj.weight"] = at::randn({kHidden, kHidden});
      pre[p + "self_attn.k_proj.weight"] = at::randn({kHidden, kHidden});
      pre[p + "mlp.up_proj.weight"] = at::randn({kInter, kHidden});
      pre[p + "mlp.down_proj.weight"] = at::randn({kHidden, kInter});
    }
    pre["model.norm.weight"] = at::ones({kHidden});
    WriteModels(pre, [this](const std::string& p) { return WriteHessians(p); });
    // (A safetensors header of 640, 896, 1152 or 1408 bytes is refused as
    // a pickle stream by RefuseIfPickle: these shapes avoid that.)
    auto opened = Checkpoint::Open(base_);
    ASSERT_TRUE(opened.ok()) << opened.status();
  }

  // Hessians for every layer's q/k (one key per layer, aliased by k) and
  // up projections: several tensors share a prepared Hessian.
  std::string WriteHessians(const std::string& path) {
    std::vector<RawTensor> t;
    nlohmann::json aliases = nlohmann::json::object();
    for (int l = 0; l < kLayers; ++l) {
      const std::string p = absl::StrCat("model.layers.", l, ".");
      at::Tensor x = at::randn({200, kHidden});
      t.push_back(ToRaw(p + "attn.hessian",
                        (2.0 / 200 * x.t().matmul(x)).contiguous()));
      aliases[p + "self_attn.q_proj.weight"] = p + "attn.hessian";
      aliases[p + "self_attn.k_proj.weight"] = p + "attn.hessian";
      aliases[p + "mlp.up_proj.weight"] = p + "attn.hessian";
    }
    WriteFileOrDie(path,
                   SerializeSafetensors(t, {{"format", "tailor-hessian/1"},
                                            {"nsamples", "200"},
                                            {"aliases", aliases.dump()}}));
    return path;
  }

  // Outputs under tmp_/<tag>/.
  FusionSpec TailorSpec(const std::string& tag) {
    FusionSpec spec;
    spec.pretrained_uri = base_;
    for (int t = 0; t < 2; ++t) {
      TaskSpec task;
      task.label = absl::StrCat("t", t);
      task.finetuned_uri = ft_[t];
      task.hessian_uri = hessians_[t];
      spec.tasks.push_back(task);
    }
    spec.tailor.keep_ratio = 0.3;
    Outputs(tag, &spec, /*patches=*/true);
    return spec;
  }

  FusionSpec TaskArithmeticSpec(const std::string& tag) {
    FusionSpec spec;
    spec.pretrained_uri = base_;
    for (int t = 0; t < 2; ++t) {
      TaskSpec task;
      task.label = absl::StrCat("t", t);
      task.finetuned_uri = ft_[t];
      spec.tasks.push_back(task);
    }
    spec.method = Method::kTaskArithmetic;
    spec.lambda = 0.7;
    Outputs(tag, &spec, /*patches=*/false);  // streamed: no patch
    return spec;
  }

  void Outputs(const std::string& tag, FusionSpec* spec, bool patches) {
    const std::string dir = Dir(tag);
    spec->output_uri = JoinPath(dir, "out");
    if (patches) spec->patch_uri = JoinPath(dir, "p.safetensors");
    spec->report_uri = JoinPath(dir, "report.json");
    spec->device = "cpu";
  }

  absl::StatusOr<nlohmann::json> Run(
      const FusionSpec& spec, int workers, Recorder* sink = nullptr,
      const std::string& journal = "",
      TensorDeviceScheduler* scheduler = nullptr, int64_t chunk = 0,
      const std::atomic<bool>* cancel = nullptr) {
    auto resolver = UriResolver::Create({tmp_.path()});
    if (!resolver.ok()) return resolver.status();
    RunOptions options;
    options.progress = sink;
    options.workers = workers;
    options.journal_dir = journal;
    options.device_scheduler = scheduler;
    options.cancel = cancel;
    if (chunk > 0) options.stream_chunk_elements = chunk;
    return RunFusionJob(spec, *resolver, options);
  }

  // Every file the job under tmp_/<tag> wrote, name -> bytes (the report
  // compared separately, without timings).
  std::map<std::string, std::string> Files(const std::string& tag) {
    std::map<std::string, std::string> files;
    const std::string dir = tmp_.Join(tag);
    auto out = ListDirectory(JoinPath(dir, "out"));
    EXPECT_TRUE(out.ok()) << tag;
    if (out.ok()) {
      for (const std::string& n : *out) {
        files["out/" + n] = ReadFileOrDie(JoinPath(dir, "out/" + n));
      }
    }
    auto top = ListDirectory(dir);
    if (top.ok()) {
      for (const std::string& n : *top) {
        if (absl::EndsWith(n, ".safetensors")) {
          files[n] = ReadFileOrDie(JoinPath(dir, n));
        }
      }
    }
    return files;
  }

  nlohmann::json Report(const std::string& tag) {
    return WithoutRunFacts(
        nlohmann::json::parse(ReadFileOrDie(tmp_.Join(tag + "/report.json"))));
  }
};

TEST_F(FusionWorkersTest, TailorWithHessiansIsIdenticalForAnyWorkerCount) {
  std::map<std::string, std::string> ref;
  nlohmann::json ref_report;
  for (int workers : {1, 2, 4}) {
    const std::string tag = absl::StrCat("w", workers);
    Recorder sink;
    auto report = Run(TailorSpec(tag), workers, &sink);
    ASSERT_TRUE(report.ok()) << report.status();
    EXPECT_EQ(sink.actions["fused"], 4 * kLayers + 1);
    EXPECT_EQ(sink.actions["copied"], 1);
    EXPECT_EQ(sink.last_done, 4 * kLayers + 2);
    EXPECT_LE(sink.max_in_flight, workers);
    const std::map<std::string, std::string> files = Files(tag);
    // The stitched patch, both per-task patches, the shards and the rest.
    EXPECT_EQ(files.count("p.safetensors"), 1u);
    EXPECT_EQ(files.count("p.t1.safetensors"), 1u);
    if (workers == 1) {
      ref = files;
      ref_report = Report(tag);
      // Calibrated tensors kept their Hessians.
      EXPECT_TRUE((*report)["tensors"][0]["tasks"][0].value("hessian", false) ||
                  (*report)["tensors"][1]["tasks"][0].value("hessian", false));
      continue;
    }
    ASSERT_EQ(files.size(), ref.size()) << workers;
    for (const auto& [name, bytes] : ref) {
      EXPECT_TRUE(files.at(name) == bytes) << name << ", workers " << workers;
    }
    nlohmann::json r = Report(tag);
    // The specs differ in their output paths only.
    r.erase("spec");
    r.erase("outputs");
    nlohmann::json rr = ref_report;
    rr.erase("spec");
    rr.erase("outputs");
    EXPECT_EQ(rr, r) << "workers " << workers;
  }
}

TEST_F(FusionWorkersTest, StreamedTaskArithmeticIsIdenticalForAnyWorkerCount) {
  std::map<std::string, std::string> ref;
  for (int workers : {1, 2, 4}) {
    const std::string tag = absl::StrCat("ta", workers);
    auto report = Run(TaskArithmeticSpec(tag), workers, nullptr, "", nullptr,
                      /*chunk=*/100);  // several chunks per tensor
    ASSERT_TRUE(report.ok()) << report.status();
    const std::map<std::string, std::string> files = Files(tag);
    if (workers == 1) {
      ref = files;
      ASSERT_GE(ref.size(), 2u);
      continue;
    }
    ASSERT_EQ(files.size(), ref.size());
    for (const auto& [name, bytes] : ref) {
      EXPECT_TRUE(files.at(name) == bytes) << name << ", workers " << workers;
    }
  }
}

TEST_F(FusionWorkersTest, TwoCpuDevicesOfDifferentBudgetsGiveTheSameBytes) {
  ASSERT_TRUE(Run(TailorSpec("ref"), 1).ok());
  // cpu-b fits one tensor at a time (estimates are tens of KB here), cpu-a
  // any number: the least-loaded choice spreads them over both.
  auto pool = jobs::DevicePool::Create(
      {{"cpu-a", "cpu", "cpu", 1 << 30}, {"cpu-b", "cpu", "cpu", 400000}});
  ASSERT_TRUE(pool.ok()) << pool.status();
  jobs::PoolScheduler scheduler(pool->get(), {0, 1}, nullptr);
  Recorder sink;
  auto report = Run(TailorSpec("pool"), 2, &sink, "", &scheduler);
  ASSERT_TRUE(report.ok()) << report.status();
  EXPECT_EQ(sink.devices["cpu-a"] + sink.devices["cpu-b"], 4 * kLayers + 1);
  EXPECT_GT(sink.devices["cpu-a"], 0);
  const auto ref = Files("ref"), got = Files("pool");
  ASSERT_EQ(ref.size(), got.size());
  for (const auto& [name, bytes] : ref) {
    EXPECT_TRUE(got.at(name) == bytes) << name;
  }
  EXPECT_EQ((*pool)->Reserved(0), 0);
  EXPECT_EQ((*pool)->Reserved(1), 0);
}

TEST_F(FusionWorkersTest, KilledMidJobWithTwoWorkersResumesByteIdentically) {
  const std::string journal = tmp_.Join("journal");
  // The killed run first, in a child, before this process runs LibTorch
  // work of its own (fork and thread pools).
  const pid_t pid = ::fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    // Earlier tests in this process used LibTorch's pools: after fork, the
    // first at::set_num_threads replaces the pthreadpool, unsynchronised
    // (1.13's caffe2::pthreadpool()), so two workers doing it at once can
    // see no pool ("Invalid thread pool!"). Do it once here first.
    at::set_num_threads(at::get_num_threads());
    Recorder killer(/*kill_after=*/6);
    auto report = Run(TailorSpec("resumed"), 2, &killer, journal);
    // Not reached: killed after 6 tensors. Say why if it is.
    std::fprintf(stderr, "the run to be killed ended after %d fused: %s\n",
                 killer.actions["fused"],
                 report.ok() ? "ok" : report.status().ToString().c_str());
    ::_exit(report.ok() ? 3 : 4);
  }
  int status = 0;
  ASSERT_EQ(::waitpid(pid, &status, 0), pid);
  ASSERT_TRUE(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL) << status;
  // Nothing was published.
  EXPECT_FALSE(PathExists(tmp_.Join("resumed/out")));
  EXPECT_FALSE(PathExists(tmp_.Join("resumed/p.safetensors")));

  Recorder second;
  auto report = Run(TailorSpec("resumed"), 2, &second, journal);
  ASSERT_TRUE(report.ok()) << report.status();
  // The journal held at least the tensors fused before the kill.
  EXPECT_GE(second.actions["resumed"], 6);
  EXPECT_EQ(second.actions["resumed"] + second.actions["fused"],
            4 * kLayers + 1);
  EXPECT_EQ((*report)["totals"]["resumed_tensors"].get<int>(),
            second.actions["resumed"]);

  ASSERT_TRUE(Run(TailorSpec("ref"), 1).ok());
  const auto ref = Files("ref"), got = Files("resumed");
  ASSERT_EQ(ref.size(), got.size());
  for (const auto& [name, bytes] : ref) {
    EXPECT_TRUE(got.at(name) == bytes) << name;
  }
  nlohmann::json a = Report("ref"), b = Report("resumed");
  for (auto* j : {&a, &b}) {
    j->erase("spec");
    j->erase("outputs");
  }
  EXPECT_EQ(a, b);
}

// Issue #12: a cancel with two tensors in flight lets them finish (and be
// journalled), publishes nothing, and the job resumed from its journal gives
// the uninterrupted run's bytes.
TEST_F(FusionWorkersTest, CancelWithTwoTensorsInFlightDrainsThemAndResumes) {
  const std::string journal = tmp_.Join("journal");
  Canceller canceller(/*after=*/3);
  auto cancelled = Run(TailorSpec("resumed"), 2, &canceller, journal, nullptr,
                       0, &canceller.cancel);
  ASSERT_TRUE(canceller.cancel.load()) << "never had two tensors in flight";
  ASSERT_FALSE(cancelled.ok());
  EXPECT_TRUE(absl::IsCancelled(cancelled.status())) << cancelled.status();
  EXPECT_TRUE(absl::StrContains(cancelled.status().message(),
                                "no output was published"))
      << cancelled.status();
  // The two tensors computing at the cancel finished before the job
  // returned, and nothing computes any more.
  EXPECT_GE(canceller.actions["fused"], canceller.fused_at_cancel + 2);
  EXPECT_LT(canceller.actions["fused"], 4 * kLayers + 1);
  EXPECT_EQ(canceller.last_in_flight, 0);
  EXPECT_FALSE(PathExists(tmp_.Join("resumed/out")));
  EXPECT_FALSE(PathExists(tmp_.Join("resumed/p.safetensors")));
  EXPECT_FALSE(PathExists(tmp_.Join("resumed/report.json")));

  Recorder second;
  auto report = Run(TailorSpec("resumed"), 2, &second, journal);
  ASSERT_TRUE(report.ok()) << report.status();
  // Every tensor fused before the cancel returned was journalled.
  EXPECT_EQ(second.actions["resumed"], canceller.actions["fused"]);
  EXPECT_EQ(second.actions["resumed"] + second.actions["fused"],
            4 * kLayers + 1);

  ASSERT_TRUE(Run(TailorSpec("ref"), 1).ok());
  const auto ref = Files("ref"), got = Files("resumed");
  ASSERT_EQ(ref.size(), got.size());
  for (const auto& [name, bytes] : ref) {
    EXPECT_TRUE(got.at(name) == bytes) << name;
  }
}

}  // namespace
}  // namespace tailor
