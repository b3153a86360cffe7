#ifndef TAILOR_TESTS_SERVER_TAILORD_FIXTURE_H_
#define TAILOR_TESTS_SERVER_TAILORD_FIXTURE_H_

// The fixture of the tailord end-to-end tests: checkpoints on disk, a
// tailord process on loopback, a gRPC stub and tailorctl.

#include <ATen/ATen.h>
#include <fcntl.h>
#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "tailor/v1/fusion_service.grpc.pb.h"
#include "testing/tailord_process.h"
#include "testing/test_util.h"
#include "util/file_util.h"

namespace tailor {

namespace v1 = ::tailor::v1;
using ::tailor::testing::CliResult;
using ::tailor::testing::HttpGet;
using ::tailor::testing::ReadFileOrDie;
using ::tailor::testing::RunTailorctl;
using ::tailor::testing::SerializeSafetensors;
using ::tailor::testing::TailordProcess;
using ::tailor::testing::TempDir;
using ::tailor::testing::ToRaw;
using ::tailor::testing::WriteFileOrDie;

// tailorctl started in the background (for signals), its stdout and stderr
// in files under `dir`; pid -1 if $TAILORCTL is not set.
struct Background {
  pid_t pid = -1;
  std::string out, err;
};
inline Background SpawnTailorctl(const std::vector<std::string>& args,
                                 const std::string& dir,
                                 const std::string& tag) {
  Background b;
  b.out = absl::StrCat(dir, "/.", tag, ".stdout");
  b.err = absl::StrCat(dir, "/.", tag, ".stderr");
  const char* bin = std::getenv("TAILORCTL");
  if (bin == nullptr) return b;
  std::vector<std::string> argv = {bin};
  argv.insert(argv.end(), args.begin(), args.end());
  b.pid = ::fork();
  if (b.pid == 0) {
    const int out = ::open(b.out.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    const int err = ::open(b.err.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    ::dup2(out, 1);
    ::dup2(err, 2);
    std::vector<char*> c;
    for (std::string& a : argv) c.push_back(a.data());
    c.push_back(nullptr);
    ::execv(bin, c.data());
    ::_exit(127);
  }
  return b;
}

// The file's bytes (up to 4 MiB), "" if unreadable.
inline std::string Slurp(const std::string& path) {
  absl::StatusOr<std::string> s = ReadFileToString(path, 4 << 20);
  return s.ok() ? *s : "";
}

// Polls (up to 120 s of wall time) until `path` contains `text`.
inline bool FileSoonContains(const std::string& path, const std::string& text) {
  const auto deadline =
      std::chrono::steady_clock::now() + std::chrono::seconds(120);
  while (std::chrono::steady_clock::now() < deadline) {
    if (absl::StrContains(Slurp(path), text)) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  return false;
}

// Waits (up to `seconds`) for `pid` to exit; its exit code, or -1 (killed
// when it does not exit in time).
inline int WaitExit(pid_t pid, int seconds = 120) {
  const auto deadline =
      std::chrono::steady_clock::now() + std::chrono::seconds(seconds);
  int status = 0;
  while (std::chrono::steady_clock::now() < deadline) {
    const pid_t r = ::waitpid(pid, &status, WNOHANG);
    if (r == pid) return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  ::kill(pid, SIGKILL);
  ::waitpid(pid, &status, 0);
  return -1;
}

// Opens a ReadJobResult stream of job `name`'s patch on `stub`, with a
// deadline `seconds` away.
inline std::unique_ptr<grpc::ClientReader<v1::ResultChunk>> ReadPatchStream(
    v1::FusionService::Stub* stub, grpc::ClientContext* context,
    const std::string& name, int seconds) {
  context->set_deadline(std::chrono::system_clock::now() +
                        std::chrono::seconds(seconds));
  v1::ReadJobResultRequest request;
  request.set_name(name);
  request.set_kind(v1::ReadJobResultRequest::PATCH);
  return stub->ReadJobResult(context, request);
}

// Whether `j` is in a final state (SUCCEEDED, FAILED or CANCELLED).
inline bool IsTerminal(const v1::FusionJob& j) {
  return j.state() == v1::SUCCEEDED || j.state() == v1::FAILED ||
         j.state() == v1::CANCELLED;
}

class TailordTest : public ::testing::Test {
 protected:
  void SetUp() override {
    at::manual_seed(11);
    WriteCheckpoint("base", "ft", "h.safetensors", /*tensors=*/3, /*dim=*/12);
  }

  // Base and fine-tuned checkpoints of `n` dim x dim linear weights (BF16)
  // plus one norm vector, and their calibration file.
  void WriteCheckpoint(const std::string& base, const std::string& ft,
                       const std::string& hessians, int n, int dim) {
    std::vector<testing::RawTensor> b, f, h;
    for (int i = 0; i < n; ++i) {
      const std::string stem = absl::StrCat("m.l", i, ".proj");
      at::Tensor w = at::randn({dim, dim});
      b.push_back(ToRaw(stem + ".weight", w.to(at::kBFloat16)));
      f.push_back(ToRaw(stem + ".weight",
                        (w + 0.3 * at::randn({dim, dim})).to(at::kBFloat16)));
      at::Tensor x = at::randn({4 * dim, dim});
      h.push_back(ToRaw(stem + ".hessian",
                        (2.0 / (4 * dim) * x.t().matmul(x)).contiguous()));
    }
    at::Tensor norm = at::ones({dim});
    b.push_back(ToRaw("m.norm.weight", norm.to(at::kBFloat16)));
    f.push_back(ToRaw("m.norm.weight",
                      (norm + 0.1 * at::randn({dim})).to(at::kBFloat16)));
    ::mkdir(tmp_.Join(base).c_str(), 0755);
    ::mkdir(tmp_.Join(ft).c_str(), 0755);
    WriteFileOrDie(tmp_.Join(base) + "/model.safetensors",
                   SerializeSafetensors(b));
    WriteFileOrDie(tmp_.Join(ft) + "/model.safetensors",
                   SerializeSafetensors(f));
    WriteFileOrDie(tmp_.Join(hessians),
                   SerializeSafetensors(h, {{"format", "tailor-hessian/1"},
                                            {"nsamples", "48"}}));
  }

  // Tensor actions of one run of a job (between RUNNING state changes).
  struct RunTally {
    int fused = 0, resumed = 0, copied = 0;
  };
  static std::vector<RunTally> TallyRuns(const std::vector<v1::JobEvent>& all) {
    std::vector<RunTally> runs;
    for (const v1::JobEvent& e : all) {
      if (e.has_state_change() && e.state_change().state() == v1::RUNNING) {
        runs.emplace_back();
      } else if (e.has_progress() && !runs.empty()) {
        const std::string& action = e.progress().action();
        if (action == "fused") ++runs.back().fused;
        if (action == "resumed") ++runs.back().resumed;
        if (action == "copied") ++runs.back().copied;
      }
    }
    return runs;
  }

  // The journal directory tailord keeps for job `name` ("fusionJobs/ID").
  std::string JournalDir(const std::string& name) const {
    return tmp_.Join("data/journal/" + name.substr(name.find('/') + 1));
  }

  // Polls until `path` is gone (or 60 s of wall time pass).
  static bool GoneSoon(const std::string& path) {
    const auto deadline =
        std::chrono::steady_clock::now() + std::chrono::seconds(60);
    while (PathExists(path) && std::chrono::steady_clock::now() < deadline) {
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    return !PathExists(path);
  }

  std::unique_ptr<TailordProcess> Start(std::vector<std::string> args = {}) {
    args.push_back("--allowed-root");
    args.push_back(tmp_.path());
    auto p =
        std::make_unique<TailordProcess>(tmp_.Join("data"), args, tmp_.path());
    EXPECT_TRUE(p->ok()) << p->Log();
    stub_ = v1::FusionService::NewStub(
        grpc::CreateChannel(p->address(), grpc::InsecureChannelCredentials()));
    return p;
  }

  // The spec of the fixture's job, writing outputs named after `tag`.
  v1::FusionJobSpec Spec(const std::string& tag,
                         const std::string& base = "base",
                         const std::string& ft = "ft",
                         const std::string& hessians = "h.safetensors") {
    v1::FusionJobSpec spec;
    spec.set_pretrained(tmp_.Join(base));
    v1::TaskSpec* task = spec.add_tasks();
    task->set_finetuned(tmp_.Join(ft));
    task->set_hessians(tmp_.Join(hessians));
    spec.set_keep(0.25);
    spec.set_out(tmp_.Join(tag + "-fused"));
    spec.set_patch_out(tmp_.Join(tag + ".patch.safetensors"));
    spec.set_report(tmp_.Join(tag + ".report.json"));
    spec.set_device("cpu");
    return spec;
  }

  grpc::Status Create(const v1::FusionJobSpec& spec, v1::FusionJob* job,
                      const std::string& request_id = "") {
    grpc::ClientContext context;
    context.set_deadline(std::chrono::system_clock::now() +
                         std::chrono::seconds(30));
    v1::CreateFusionJobRequest request;
    *request.mutable_spec() = spec;
    request.set_request_id(request_id);
    return stub_->CreateFusionJob(&context, request, job);
  }

  v1::FusionJob Get(const std::string& name) {
    grpc::ClientContext context;
    v1::GetFusionJobRequest request;
    request.set_name(name);
    v1::FusionJob job;
    grpc::Status s = stub_->GetFusionJob(&context, request, &job);
    EXPECT_TRUE(s.ok()) << s.error_message();
    return job;
  }

  // Polls until `done(job)` (or 180 s of wall time pass: generous for a
  // loaded machine).
  template <typename Pred>
  v1::FusionJob WaitUntil(const std::string& name, Pred done) {
    const auto deadline =
        std::chrono::steady_clock::now() + std::chrono::seconds(180);
    while (std::chrono::steady_clock::now() < deadline) {
      v1::FusionJob job = Get(name);
      if (done(job)) return job;
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    ADD_FAILURE() << "timed out waiting for " << name;
    return v1::FusionJob();
  }

  // Polls (WaitUntil's deadline) until the job reaches a final state.
  v1::FusionJob WaitDone(const std::string& name) {
    return WaitUntil(name, IsTerminal);
  }

  std::vector<v1::JobEvent> Watch(const std::string& name, int64_t after,
                                  grpc::Status* status) {
    grpc::ClientContext context;
    context.set_deadline(std::chrono::system_clock::now() +
                         std::chrono::seconds(60));
    v1::WatchFusionJobRequest request;
    request.set_name(name);
    request.set_after_sequence(after);
    auto reader = stub_->WatchFusionJob(&context, request);
    std::vector<v1::JobEvent> events;
    v1::JobEvent e;
    while (reader->Read(&e)) events.push_back(e);
    *status = reader->Finish();
    return events;
  }

  static void ExpectGapFree(const std::vector<v1::JobEvent>& events,
                            int64_t first) {
    for (size_t i = 0; i < events.size(); ++i) {
      ASSERT_EQ(events[i].sequence(), first + static_cast<int64_t>(i));
    }
  }

  // A job long enough to be interrupted: many tensors, each event fsynced.
  v1::FusionJobSpec SlowSpec(const std::string& tag) {
    if (!PathExists(tmp_.Join("slow-base"))) {
      // Exact float64 compensation of 240 64x64 tensors, each journalled: a
      // second or two on an idle 2-core machine, so a cancel, drain or
      // SIGKILL sent over gRPC after the first tensor (milliseconds) lands
      // while the job runs; slower machines stretch both alike.
      WriteCheckpoint("slow-base", "slow-ft", "slow-h.safetensors", 240, 64);
    }
    v1::FusionJobSpec spec =
        Spec(tag, "slow-base", "slow-ft", "slow-h.safetensors");
    spec.set_compensation(v1::COMPENSATION_EXACT);
    spec.set_float64(true);
    return spec;
  }

  CliResult Tailorctl(const std::vector<std::string>& args) {
    return RunTailorctl(args, tmp_.path());
  }

  TempDir tmp_;
  std::unique_ptr<v1::FusionService::Stub> stub_;
};

}  // namespace tailor

#endif  // TAILOR_TESTS_SERVER_TAILORD_FIXTURE_H_
