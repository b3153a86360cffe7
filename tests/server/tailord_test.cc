// tailord end to end on loopback: tailorctl and a gRPC stub against a real
// server process, compared with `tailorctl fuse --local`.

#include <ATen/ATen.h>
#include <fcntl.h>
#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <iostream>
#include <thread>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "tailor/v1/fusion_service.grpc.pb.h"
#include "tailord_fixture.h"
#include "testing/reflection_client.h"
#include "testing/tailord_process.h"
#include "testing/test_util.h"
#include "util/file_util.h"

namespace tailor {
namespace {

// Issue #17 point 1 (and 6): outputs are checked when the job is created.
TEST_F(TailordTest, CreateChecksOutputsAndRunCreatesMissingParents) {
  auto server = Start();
  ASSERT_TRUE(server->ok());
  v1::FusionJob job;
  ASSERT_EQ(::mkdir(tmp_.Join("exists-fused").c_str(), 0755), 0);
  grpc::Status s = Create(Spec("exists"), &job);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::ALREADY_EXISTS)
      << s.error_message();
  EXPECT_TRUE(absl::StartsWith(s.error_message(), "spec.out: "))
      << s.error_message();
  EXPECT_TRUE(absl::StrContains(s.error_message(), "overwrite: true"))
      << s.error_message();
  EXPECT_TRUE(absl::StrContains(s.error_message(), "--overwrite"))
      << s.error_message();
  v1::FusionJobSpec replace = Spec("exists");
  replace.set_overwrite(true);
  v1::FusionJob replaced;
  ASSERT_TRUE(Create(replace, &replaced).ok());

  WriteFileOrDie(tmp_.Join("plain-file"), "x");
  v1::FusionJobSpec under_file = Spec("x");
  under_file.set_report(tmp_.Join("plain-file/sub/report.json"));
  // (The resolver already refuses an output under a regular file.)
  s = Create(under_file, &job);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::FAILED_PRECONDITION)
      << s.error_message();
  EXPECT_TRUE(absl::StartsWith(s.error_message(), "report: "))
      << s.error_message();

  v1::FusionJobSpec deep = Spec("deep");
  deep.set_out(tmp_.Join("deep/a/fused"));
  deep.set_patch_out(tmp_.Join("deep/b/p.safetensors"));
  deep.set_report(tmp_.Join("deep/b/c/report.json"));
  v1::FusionJob created;
  s = Create(deep, &created);
  ASSERT_TRUE(s.ok()) << s.error_message();
  for (const std::string& name : {replaced.name(), created.name()}) {
    v1::FusionJob done = WaitUntil(name, [](const v1::FusionJob& j) {
      return j.state() == v1::SUCCEEDED || j.state() == v1::FAILED;
    });
    EXPECT_EQ(done.state(), v1::SUCCEEDED) << done.error_message();
  }
  EXPECT_TRUE(IsRegularFile(tmp_.Join("deep/a/fused/model.safetensors")));
  EXPECT_TRUE(IsRegularFile(tmp_.Join("deep/b/p.safetensors")));
  EXPECT_TRUE(IsRegularFile(tmp_.Join("deep/b/c/report.json")));
}

// Issue #17 point 4: Ctrl-C on watch detaches (exit 8, how to resume) and
// the job goes on; with --cancel-on-interrupt it is cancelled (exit 130).
// The server is stopped (SIGSTOP) while the client is interrupted so that
// the job cannot end first on a slow machine.
TEST_F(TailordTest, InterruptedWatchDetachesOrCancels) {
  auto server = Start();
  ASSERT_TRUE(server->ok());
  for (const bool cancel : {false, true}) {
    SCOPED_TRACE(cancel ? "--cancel-on-interrupt" : "detach");
    v1::FusionJob job;
    ASSERT_TRUE(
        Create(SlowSpec(cancel ? "interrupt-cancel" : "interrupt"), &job).ok());
    WaitUntil(job.name(), [](const v1::FusionJob& j) {
      return j.progress().tensors_done() >= 1;
    });
    ASSERT_EQ(::kill(server->pid(), SIGSTOP), 0);
    std::vector<std::string> args = {
        "watch",
        job.name().substr(job.name().find('/') + 1),  // a bare id
        "--server", server->address()};
    if (cancel) args.push_back("--cancel-on-interrupt");
    Background watch =
        SpawnTailorctl(args, tmp_.path(), cancel ? "cancel" : "detach");
    ASSERT_GT(watch.pid, 0);
    // The "watching" line comes once the handler is installed.
    const bool watching = FileSoonContains(watch.err, "tailorctl: watching");
    ::kill(watch.pid, SIGINT);
    if (cancel) {
      // The cancel needs the server.
      std::this_thread::sleep_for(std::chrono::milliseconds(200));
      ::kill(server->pid(), SIGCONT);
    }
    const int code = WaitExit(watch.pid);
    ::kill(server->pid(), SIGCONT);
    ASSERT_TRUE(watching) << Slurp(watch.err);
    const std::string err = Slurp(watch.err);
    v1::FusionJob done = WaitUntil(job.name(), [](const v1::FusionJob& j) {
      return j.state() == v1::SUCCEEDED || j.state() == v1::FAILED ||
             j.state() == v1::CANCELLED;
    });
    if (cancel) {
      EXPECT_EQ(code, 130) << err;
      EXPECT_EQ(done.state(), v1::CANCELLED) << err;
    } else {
      EXPECT_EQ(code, 8) << err;
      EXPECT_TRUE(absl::StrContains(
          err, absl::StrCat("detached; the job continues: tailorctl watch ",
                            job.name(), " --after ")))
          << err;
      EXPECT_EQ(done.state(), v1::SUCCEEDED) << done.error_message();
    }
  }
}

// Issue #17 point 5: get takes a bare id, shows details, and -o job is a
// job file that submits the same spec again.
TEST_F(TailordTest, GetShowsDetailsAndRoundTripsAsAJobFile) {
  auto server = Start();
  ASSERT_TRUE(server->ok());
  v1::FusionJobSpec spec = Spec("roundtrip");
  spec.set_overwrite(true);
  v1::FusionJob job;
  ASSERT_TRUE(Create(spec, &job).ok());
  WaitUntil(job.name(),
            [](const v1::FusionJob& j) { return j.state() == v1::SUCCEEDED; });
  const std::string id = job.name().substr(job.name().find('/') + 1);
  CliResult get = Tailorctl({"get", id, "--server", server->address()});
  ASSERT_EQ(get.code, 0) << get.err;
  for (const char* want :
       {"Name:", "State:       SUCCEEDED", "Created:", "Started:", "Ended:",
        "Progress:", "Result:", "Spec (", "pretrained:"}) {
    EXPECT_TRUE(absl::StrContains(get.out, want)) << want << "\n" << get.out;
  }
  CliResult as_job = Tailorctl(
      {"get", job.name(), "--server", server->address(), "-o", "job"});
  ASSERT_EQ(as_job.code, 0) << as_job.err;
  EXPECT_FALSE(absl::StrContains(as_job.out, "METHOD_")) << as_job.out;
  WriteFileOrDie(tmp_.Join("again.yaml"), as_job.out);
  CliResult submit = Tailorctl({"submit", "-f", tmp_.Join("again.yaml"),
                                "--server", server->address(), "--wait", "-q"});
  ASSERT_EQ(submit.code, 0) << submit.err << "\n" << as_job.out;
  const size_t at = submit.err.find("fusionJobs/");
  ASSERT_NE(at, std::string::npos) << submit.err;
  const std::string second = submit.err.substr(at, 27);
  EXPECT_NE(second, job.name());
  CliResult again =
      Tailorctl({"get", second, "--server", server->address(), "-o", "job"});
  ASSERT_EQ(again.code, 0) << again.err;
  EXPECT_EQ(again.out, as_job.out);
}

TEST_F(TailordTest, SubmitWaitFetchMatchesLocalFuse) {
  auto server = Start();
  ASSERT_TRUE(server->ok());
  CliResult local = Tailorctl(
      {"fuse", "--local", "--pretrained", tmp_.Join("base"), "--finetuned",
       tmp_.Join("ft"), "--hessians", tmp_.Join("h.safetensors"), "--keep",
       "0.25", "--out", tmp_.Join("local-fused"), "--patch-out",
       tmp_.Join("local.patch.safetensors"), "--device", "cpu", "-q"});
  ASSERT_EQ(local.code, 0) << local.err;
  WriteFileOrDie(
      tmp_.Join("job.yaml"),
      absl::StrCat(
          "pretrained: ", tmp_.Join("base"), "\ntasks:\n  - finetuned: ",
          tmp_.Join("ft"), "\n    hessians: ", tmp_.Join("h.safetensors"),
          "\nkeep: 0.25\ndevice: cpu\nout: ", tmp_.Join("remote-fused"),
          "\npatch_out: ", tmp_.Join("remote.patch.safetensors"),
          "\nreport: ", tmp_.Join("remote.json"), "\n"));
  CliResult submit =
      Tailorctl({"submit", "-f", tmp_.Join("job.yaml"), "--server",
                 server->address(), "--wait", "-q", "--label", "team=qa"});
  ASSERT_EQ(submit.code, 0) << submit.err << server->Log();
  EXPECT_TRUE(absl::StrContains(submit.out, "SUCCEEDED")) << submit.out;
  const size_t at = submit.err.find("fusionJobs/");
  ASSERT_NE(at, std::string::npos) << submit.err;
  const std::string name = submit.err.substr(at, 27);

  CliResult fetch = Tailorctl({"fetch", name, "--server", server->address(),
                               "--patch", tmp_.Join("fetched.patch"),
                               "--report", tmp_.Join("fetched.json")});
  ASSERT_EQ(fetch.code, 0) << fetch.err;
  const std::string patch = ReadFileOrDie(tmp_.Join("fetched.patch"));
  EXPECT_EQ(patch, ReadFileOrDie(tmp_.Join("local.patch.safetensors")));
  EXPECT_EQ(patch, ReadFileOrDie(tmp_.Join("remote.patch.safetensors")));
  EXPECT_EQ(ReadFileOrDie(tmp_.Join("fetched.json")),
            ReadFileOrDie(tmp_.Join("remote.json")));
  EXPECT_EQ(ReadFileOrDie(tmp_.Join("remote-fused/model.safetensors")),
            ReadFileOrDie(tmp_.Join("local-fused/model.safetensors")));

  CliResult get =
      Tailorctl({"get", name, "--server", server->address(), "-o", "yaml"});
  ASSERT_EQ(get.code, 0) << get.err;
  EXPECT_TRUE(absl::StrContains(get.out, "state: \"SUCCEEDED\"")) << get.out;
  CliResult list = Tailorctl({"list", "--server", server->address(), "--filter",
                              "labels.team=qa", "-o", "json"});
  ASSERT_EQ(list.code, 0) << list.err;
  EXPECT_TRUE(absl::StrContains(list.out, name)) << list.out;
  CliResult none = Tailorctl(
      {"list", "--server", server->address(), "--filter", "state=FAILED"});
  EXPECT_FALSE(absl::StrContains(none.out, name)) << none.out;
}

TEST_F(TailordTest, RequestIdIsIdempotentAndBadInputGetsTheRightCode) {
  auto server = Start();
  ASSERT_TRUE(server->ok());
  v1::FusionJob a, b, c;
  ASSERT_TRUE(Create(Spec("idem"), &a, "req-0001").ok());
  ASSERT_TRUE(Create(Spec("idem"), &b, "req-0001").ok());
  EXPECT_EQ(a.name(), b.name());
  grpc::Status s = Create(Spec("other"), &c, "req-0001");
  EXPECT_EQ(s.error_code(), grpc::StatusCode::ALREADY_EXISTS);
  EXPECT_TRUE(absl::StrContains(s.error_message(), a.name()));

  v1::FusionJobSpec no_base = Spec("x");
  no_base.clear_pretrained();
  s = Create(no_base, &c);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_EQ(s.error_message(), "spec.pretrained: is required");
  v1::FusionJobSpec keep = Spec("x");
  keep.set_keep(2);
  s = Create(keep, &c);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_TRUE(absl::StrContains(s.error_message(), "keep"))
      << s.error_message();
  v1::FusionJobSpec outside = Spec("x");
  outside.set_pretrained("/etc");
  EXPECT_EQ(Create(outside, &c).error_code(),
            grpc::StatusCode::PERMISSION_DENIED);
  v1::FusionJobSpec missing = Spec("x");
  missing.set_pretrained(tmp_.Join("nope"));
  s = Create(missing, &c);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::NOT_FOUND);
  EXPECT_TRUE(absl::StartsWith(s.error_message(), "pretrained:"))
      << s.error_message();
  v1::FusionJobSpec no_out = Spec("x");
  no_out.clear_out();
  no_out.clear_patch_out();
  no_out.clear_report();
  EXPECT_EQ(Create(no_out, &c).error_code(),
            grpc::StatusCode::INVALID_ARGUMENT);
  {
    grpc::ClientContext context;
    v1::CreateFusionJobRequest request;
    *request.mutable_spec() = Spec("x");
    request.set_priority(12);
    EXPECT_EQ(stub_->CreateFusionJob(&context, request, &c).error_code(),
              grpc::StatusCode::INVALID_ARGUMENT);
  }
  {
    grpc::ClientContext context;
    v1::ListFusionJobsRequest request;
    request.set_filter("state=DONE");
    v1::ListFusionJobsResponse response;
    EXPECT_EQ(stub_->ListFusionJobs(&context, request, &response).error_code(),
              grpc::StatusCode::INVALID_ARGUMENT);
  }
  grpc::Status watch;
  Watch("fusionJobs/0000000000000000", 0, &watch);
  EXPECT_EQ(watch.error_code(), grpc::StatusCode::NOT_FOUND);
  Watch(a.name(), -3, &watch);
  EXPECT_EQ(watch.error_code(), grpc::StatusCode::INVALID_ARGUMENT);

  // tailorctl's exit codes for the same kinds of trouble.
  EXPECT_EQ(Tailorctl({"get", "fusionJobs/0000000000000000", "--server",
                       server->address()})
                .code,
            4);
  EXPECT_EQ(Tailorctl({"get", "jobs/7", "--server", server->address()}).code,
            3);
  EXPECT_EQ(
      Tailorctl({"cancel", a.name(), "--server", server->address()}).code ==
              0 ||
          Get(a.name()).state() == v1::SUCCEEDED,
      true);
  EXPECT_EQ(
      Tailorctl({"get", a.name(), "--server", "127.0.0.1:1", "--timeout", "5"})
          .code,
      7);
  // The server is still up and answering.
  EXPECT_EQ(Get(a.name()).name(), a.name());
}

TEST_F(TailordTest, WatchersSeeGapFreeSequencesLiveLateAndResumed) {
  auto server = Start();
  ASSERT_TRUE(server->ok());
  v1::FusionJob job;
  ASSERT_TRUE(Create(Spec("watch"), &job).ok());
  grpc::Status live_status, late_status, resumed_status;
  std::vector<v1::JobEvent> live = Watch(job.name(), 0, &live_status);
  ASSERT_TRUE(live_status.ok()) << live_status.error_message();
  ExpectGapFree(live, 1);
  ASSERT_GE(live.size(), 6u);  // QUEUED RUNNING planned 4 tensors SUCCEEDED
  EXPECT_EQ(live.front().state_change().state(), v1::QUEUED);
  EXPECT_EQ(live.back().state_change().state(), v1::SUCCEEDED);
  EXPECT_EQ(live.back().state_change().result().tensors_fused(), 4);

  std::vector<v1::JobEvent> late = Watch(job.name(), 0, &late_status);
  ASSERT_TRUE(late_status.ok());
  ASSERT_EQ(late.size(), live.size());
  for (size_t i = 0; i < late.size(); ++i) {
    EXPECT_EQ(late[i].SerializeAsString(), live[i].SerializeAsString());
  }
  const int64_t k = 3;
  std::vector<v1::JobEvent> resumed = Watch(job.name(), k, &resumed_status);
  ASSERT_TRUE(resumed_status.ok());
  ExpectGapFree(resumed, k + 1);
  EXPECT_EQ(resumed.size(), live.size() - k);
  std::vector<v1::JobEvent> none =
      Watch(job.name(), live.back().sequence(), &resumed_status);
  EXPECT_TRUE(resumed_status.ok());
  EXPECT_TRUE(none.empty());
}

TEST_F(TailordTest, CancelMidJobPublishesNothing) {
  auto server = Start();
  ASSERT_TRUE(server->ok());
  v1::FusionJob job;
  ASSERT_TRUE(Create(SlowSpec("cancelled"), &job).ok());
  WaitUntil(job.name(), [](const v1::FusionJob& j) {
    return j.progress().tensors_done() >= 1;
  });
  // The first cancel goes straight over gRPC (a tailorctl process takes
  // seconds to start on a loaded machine, time in which the job may finish);
  // the CLI is exercised by the second one.
  {
    grpc::ClientContext context;
    v1::CancelFusionJobRequest request;
    request.set_name(job.name());
    v1::FusionJob cancelled;
    const grpc::Status s =
        stub_->CancelFusionJob(&context, request, &cancelled);
    ASSERT_TRUE(s.ok()) << s.error_message();
    EXPECT_TRUE(cancelled.cancel_requested());
  }
  v1::FusionJob done = WaitUntil(job.name(), [](const v1::FusionJob& j) {
    return j.state() == v1::CANCELLED || j.state() == v1::SUCCEEDED;
  });
  ASSERT_EQ(done.state(), v1::CANCELLED);
  EXPECT_LT(done.progress().tensors_done(), done.progress().tensors_total());
  EXPECT_FALSE(PathExists(tmp_.Join("cancelled-fused")));
  EXPECT_FALSE(PathExists(tmp_.Join("cancelled.patch.safetensors")));
  EXPECT_FALSE(PathExists(tmp_.Join("cancelled.report.json")));
  CliResult again =
      Tailorctl({"cancel", job.name(), "--server", server->address()});
  EXPECT_EQ(again.code, 3) << again.err;  // FAILED_PRECONDITION
  CliResult watch =
      Tailorctl({"watch", job.name(), "--server", server->address(), "-q"});
  EXPECT_EQ(watch.code, 130) << watch.err;
  EXPECT_TRUE(absl::StrContains(watch.out, "CANCELLED")) << watch.out;
}

TEST_F(TailordTest, DrainEndsWatchersThenARestartFinishesTheJob) {
  std::string name;
  {
    auto server = Start({"--drain-timeout", "10"});
    ASSERT_TRUE(server->ok());
    v1::FusionJob job;
    ASSERT_TRUE(Create(SlowSpec("drained"), &job).ok());
    name = job.name();
    WaitUntil(name, [](const v1::FusionJob& j) {
      return j.progress().tensors_done() >= 1;
    });
    grpc::Status watch_status;
    std::vector<v1::JobEvent> seen;
    std::atomic<int> received{0};
    std::thread watcher([&] {
      grpc::ClientContext context;
      v1::WatchFusionJobRequest request;
      request.set_name(name);
      auto reader = stub_->WatchFusionJob(&context, request);
      v1::JobEvent e;
      while (reader->Read(&e)) {
        seen.push_back(e);
        ++received;
      }
      watch_status = reader->Finish();
    });
    // SIGTERM only once the watcher is attached and streaming.
    for (int i = 0; i < 3000 && received.load() == 0; ++i) {
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    EXPECT_GT(received.load(), 0);
    const auto t0 = std::chrono::steady_clock::now();
    EXPECT_EQ(server->Stop(SIGTERM), 0);
    const double drain_s =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - t0)
            .count();
    watcher.join();
    std::cout << "drain: SIGTERM to exit " << drain_s << " s, watcher saw "
              << seen.size() << " events\n";
    EXPECT_LT(drain_s, 10.0);
    EXPECT_EQ(watch_status.error_code(), grpc::StatusCode::UNAVAILABLE)
        << watch_status.error_message();
    EXPECT_TRUE(
        absl::StrContains(watch_status.error_message(), "after_sequence"));
    ExpectGapFree(seen, 1);
    ASSERT_FALSE(seen.empty());
    // The job went back to the queue, and the watcher saw that.
    EXPECT_EQ(seen.back().state_change().state(), v1::QUEUED);
  }
  // The drained job checkpointed: its journal holds its completed tensors.
  auto journal = ListDirectory(JournalDir(name));
  ASSERT_TRUE(journal.ok()) << journal.status();
  const int journalled = static_cast<int>(std::count_if(
      journal->begin(), journal->end(),
      [](const std::string& n) { return absl::EndsWith(n, ".safetensors"); }));
  EXPECT_GE(journalled, 1);
  uint64_t journal_bytes = 0;
  for (const std::string& n : *journal) {
    journal_bytes += ReadFileOrDie(JoinPath(JournalDir(name), n)).size();
  }
  auto server = Start();
  ASSERT_TRUE(server->ok());
  v1::FusionJob done = WaitUntil(name, [](const v1::FusionJob& j) {
    return j.state() == v1::SUCCEEDED || j.state() == v1::FAILED;
  });
  ASSERT_EQ(done.state(), v1::SUCCEEDED) << done.error_message();
  grpc::Status status;
  std::vector<v1::JobEvent> all = Watch(name, 0, &status);
  ASSERT_TRUE(status.ok());
  ExpectGapFree(all, 1);
  std::vector<RunTally> runs = TallyRuns(all);
  ASSERT_EQ(runs.size(), 2u);
  std::cout << "drain-resume: " << journalled
            << " tensors journalled at the drain; the rerun resumed "
            << runs[1].resumed << " and computed " << runs[1].fused
            << "; journal " << journal_bytes << " bytes\n";
  EXPECT_EQ(runs[1].resumed, journalled);
  EXPECT_TRUE(GoneSoon(JournalDir(name)));
  // Byte-identical to an uninterrupted local run.
  CliResult local = Tailorctl(
      {"fuse", "--local", "--pretrained", tmp_.Join("slow-base"), "--finetuned",
       tmp_.Join("slow-ft"), "--hessians", tmp_.Join("slow-h.safetensors"),
       "--keep", "0.25", "--compensation", "exact", "--float64", "--patch-out",
       tmp_.Join("slow-local.patch"), "--device", "cpu", "-q"});
  ASSERT_EQ(local.code, 0) << local.err;
  EXPECT_EQ(ReadFileOrDie(tmp_.Join("drained.patch.safetensors")),
            ReadFileOrDie(tmp_.Join("slow-local.patch")));
}

TEST_F(TailordTest, SigkillMidJobThenRestartIsByteIdentical) {
  // Kill points: after 1, about a third, and about two thirds of the tensors.
  v1::FusionJobSpec spec = SlowSpec("killed");
  std::string name;
  int total = 0;
  // Three kills in a row: more than --max-interrupted-runs' default (2)
  // allows before a job counts as poisoned.
  const std::vector<std::string> flags = {"--max-interrupted-runs", "4"};
  for (int point : {1, 80, 160}) {
    auto server = Start(flags);
    ASSERT_TRUE(server->ok());
    if (name.empty()) {
      v1::FusionJob job;
      ASSERT_TRUE(Create(spec, &job).ok());
      name = job.name();
    }
    v1::FusionJob seen = WaitUntil(name, [&](const v1::FusionJob& j) {
      return j.progress().tensors_done() >= point || j.state() == v1::SUCCEEDED;
    });
    ASSERT_EQ(seen.state(), v1::RUNNING)
        << "the job finished before kill point " << point;
    total = static_cast<int>(seen.progress().tensors_total());
    server->Stop(SIGKILL);
    EXPECT_FALSE(PathExists(tmp_.Join("killed.patch.safetensors")));
  }
  auto server = Start(flags);
  ASSERT_TRUE(server->ok());
  v1::FusionJob done = WaitUntil(name, [](const v1::FusionJob& j) {
    return j.state() == v1::SUCCEEDED || j.state() == v1::FAILED;
  });
  ASSERT_EQ(done.state(), v1::SUCCEEDED) << done.error_message();
  EXPECT_EQ(done.progress().tensors_done(), total);
  std::cout << "crash-resume: SIGKILL after 1, 80, 160 of " << total
            << " tensors, then a clean run\n";
  grpc::Status status;
  std::vector<v1::JobEvent> all = Watch(name, 0, &status);
  ASSERT_TRUE(status.ok());
  ExpectGapFree(all, 1);
  int requeued = 0;
  for (const v1::JobEvent& e : all) {
    if (e.has_state_change() && e.state_change().state() == v1::QUEUED &&
        e.sequence() > 1) {
      ++requeued;
    }
  }
  EXPECT_EQ(requeued, 3);  // one per kill
  // Each run after a kill continued from the journal: it resumed at least
  // every tensor the runs before it had completed (a killed run may have
  // journalled one more tensor than its events show).
  std::vector<RunTally> runs = TallyRuns(all);
  ASSERT_EQ(runs.size(), 4u);
  std::cout << "crash-resume: per run (fused computed / resumed from the "
               "journal / copied):";
  for (const RunTally& r : runs) {
    std::cout << " " << r.fused << "/" << r.resumed << "/" << r.copied;
  }
  std::cout << "\n";
  EXPECT_EQ(runs[0].resumed, 0);
  for (size_t k = 1; k < runs.size(); ++k) {
    EXPECT_GE(runs[k].resumed, runs[k - 1].resumed + runs[k - 1].fused)
        << "run " << k;
  }
  EXPECT_GT(runs.back().resumed, 0);
  EXPECT_EQ(done.result().resumed_tensors(), runs.back().resumed);
  EXPECT_EQ(runs.back().fused + runs.back().resumed + runs.back().copied,
            total);
  EXPECT_LT(runs.back().fused, total - 160 + 1);
  // The journal goes once the job has succeeded.
  EXPECT_TRUE(GoneSoon(JournalDir(name)));
  CliResult local = Tailorctl({"fuse",
                               "--local",
                               "--pretrained",
                               tmp_.Join("slow-base"),
                               "--finetuned",
                               tmp_.Join("slow-ft"),
                               "--hessians",
                               tmp_.Join("slow-h.safetensors"),
                               "--keep",
                               "0.25",
                               "--compensation",
                               "exact",
                               "--float64",
                               "--out",
                               tmp_.Join("slow-local-fused"),
                               "--patch-out",
                               tmp_.Join("slow-local.patch"),
                               "--device",
                               "cpu",
                               "-q"});
  ASSERT_EQ(local.code, 0) << local.err;
  EXPECT_EQ(ReadFileOrDie(tmp_.Join("killed.patch.safetensors")),
            ReadFileOrDie(tmp_.Join("slow-local.patch")));
  EXPECT_EQ(ReadFileOrDie(tmp_.Join("killed-fused/model.safetensors")),
            ReadFileOrDie(tmp_.Join("slow-local-fused/model.safetensors")));
}

// Bounded load on loopback: 30 queued jobs, 100 concurrent watchers; every
// watcher must see every event of its job, in order, without gaps.
TEST_F(TailordTest, HundredWatchersThirtyQueuedJobs) {
  auto server = Start({"--max-concurrent-jobs", "2"});
  ASSERT_TRUE(server->ok());
  std::vector<std::string> names;
  for (int i = 0; i < 30; ++i) {
    v1::FusionJob job;
    ASSERT_TRUE(Create(Spec(absl::StrCat("load", i)), &job).ok());
    names.push_back(job.name());
  }
  const auto t0 = std::chrono::steady_clock::now();
  std::vector<std::thread> watchers;
  std::vector<int> complete(100, 0);
  for (int w = 0; w < 100; ++w) {
    watchers.emplace_back([&, w] {
      grpc::Status status;
      std::vector<v1::JobEvent> events = Watch(names[w % 30], 0, &status);
      bool ok = status.ok() && !events.empty() &&
                events.back().state_change().state() == v1::SUCCEEDED;
      for (size_t i = 0; ok && i < events.size(); ++i) {
        ok = events[i].sequence() == static_cast<int64_t>(i + 1);
      }
      complete[w] = ok;
    });
  }
  for (std::thread& t : watchers) t.join();
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - t0)
          .count();
  EXPECT_EQ(std::count(complete.begin(), complete.end(), 1), 100);
  // Peak RSS of the server, for the record.
  const std::string status =
      ReadFileOrDie(absl::StrCat("/proc/", server->pid(), "/status"));
  const size_t hwm = status.find("VmHWM:");
  ASSERT_NE(hwm, std::string::npos);
  std::cout << "load: 30 jobs, 100 watchers, " << seconds << " s, server "
            << status.substr(hwm, status.find('\n', hwm) - hwm) << "\n";
}

// Two jobs at once under a CPU budget of about one tensor's estimate: the
// pool serialises their tensors and both complete; a budget smaller than
// a tensor's estimate fails the job naming the tensor.
TEST_F(TailordTest, DeviceBudgetSerialisesConcurrentJobs) {
  auto server =
      Start({"--max-concurrent-jobs", "2", "--device-memory-budget", "cpu=8K"});
  ASSERT_TRUE(server->ok());
  v1::FusionJob a, b;
  ASSERT_TRUE(Create(Spec("pool-a"), &a).ok());
  ASSERT_TRUE(Create(Spec("pool-b"), &b).ok());
  for (const std::string& name : {a.name(), b.name()}) {
    v1::FusionJob done = WaitUntil(name, [](const v1::FusionJob& j) {
      return j.state() == v1::SUCCEEDED || j.state() == v1::FAILED;
    });
    EXPECT_EQ(done.state(), v1::SUCCEEDED) << done.error_message();
  }
  const std::string text = HttpGet(server->metrics_port(), "/metrics").body;
  for (const char* line :
       {"tailor_tensors_processed_total{device=\"cpu\",action=\"fused\"} 8\n",
        "tailor_tensor_duration_seconds_count{device=\"cpu\"} 8\n",
        "tailor_device_memory_budget_bytes{device=\"cpu\"} 8000\n",
        "tailor_device_memory_in_use_bytes{device=\"cpu\"} 0\n",
        // Issue #12: the executor's gauges are back at zero after the
        // jobs; the fused tensors' compute time is counted per device.
        "tailor_executor_items{state=\"in_flight\"} 0\n",
        "tailor_executor_items{state=\"queued\"} 0\n",
        "tailor_device_busy_seconds_total{device=\"cpu\"} "}) {
    EXPECT_TRUE(absl::StrContains(text, line)) << "missing: " << line;
  }
  EXPECT_FALSE(absl::StrContains(
      text, "tailor_device_busy_seconds_total{device=\"cpu\"} 0\n"));
  server.reset();

  auto tiny = Start({"--device-memory-budget", "cpu=1K"});
  ASSERT_TRUE(tiny->ok());
  v1::FusionJob c;
  ASSERT_TRUE(Create(Spec("pool-c"), &c).ok());
  v1::FusionJob failed = WaitUntil(c.name(), [](const v1::FusionJob& j) {
    return j.state() == v1::FAILED || j.state() == v1::SUCCEEDED;
  });
  EXPECT_EQ(failed.state(), v1::FAILED);
  EXPECT_EQ(failed.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
  EXPECT_TRUE(absl::StrContains(failed.error_message(), "tensor 'm."))
      << failed.error_message();
  EXPECT_TRUE(absl::StrContains(failed.error_message(), "cpu: 1000 bytes"))
      << failed.error_message();
}

TEST_F(TailordTest, MetricsPassPromtoolAndMove) {
  auto server = Start();
  ASSERT_TRUE(server->ok());
  testing::HttpResponse before = HttpGet(server->metrics_port(), "/metrics");
  ASSERT_EQ(before.status, 200);
  v1::FusionJob job;
  ASSERT_TRUE(Create(Spec("metrics"), &job).ok());
  WaitUntil(job.name(),
            [](const v1::FusionJob& j) { return j.state() == v1::SUCCEEDED; });
  v1::FusionJob bad;
  v1::FusionJobSpec invalid = Spec("m2");
  invalid.set_keep(-1);
  EXPECT_FALSE(Create(invalid, &bad).ok());

  testing::HttpResponse after = HttpGet(server->metrics_port(), "/metrics");
  ASSERT_EQ(after.status, 200);
  const std::string& text = after.body;
  for (const char* line :
       {"tailor_jobs_submitted_total 1\n",
        "tailor_jobs_finished_total{outcome=\"succeeded\"} 1\n",
        "tailor_jobs{state=\"succeeded\"} 1\n",
        "tailor_tensors_processed_total{device=\"cpu\",action=\"fused\"} 4\n",
        "tailor_validation_failures_total{reason=\"invalid_argument\"} 1\n",
        "tailor_rpcs_total{method=\"CreateFusionJob\",code=\"ok\"} 1\n",
        "tailor_rpcs_total{method=\"CreateFusionJob\",code=\"invalid_"
        "argument\"}"
        " 1\n",
        "tailor_job_duration_seconds_count{outcome=\"succeeded\"} 1\n",
        "tailor_job_queue_wait_seconds_count 1\n"}) {
    EXPECT_TRUE(absl::StrContains(text, line)) << "missing: " << line;
  }
  EXPECT_TRUE(
      absl::StrContains(text, "tailor_last_success_timestamp_seconds "));
  EXPECT_TRUE(absl::StrContains(text, "tailor_device_memory_in_use_bytes{"));
  EXPECT_FALSE(absl::StrContains(text, "fusionJobs/")) << "job ids as labels";
  EXPECT_FALSE(absl::StrContains(text, tmp_.path())) << "URIs as labels";
  EXPECT_FALSE(absl::StrContains(before.body, "succeeded\"} 1"));

  testing::CommandResult promtool = testing::RunWithInput(
      std::string(TAILOR_PROMTOOL) + " check metrics", text, tmp_.path());
  EXPECT_EQ(promtool.code, 0) << promtool.output;
  // promtool must not be passing an empty or truncated scrape.
  EXPECT_GT(std::count(text.begin(), text.end(), '\n'), 60);

  EXPECT_EQ(HttpGet(server->metrics_port(), "/healthz").status, 200);
  EXPECT_EQ(HttpGet(server->metrics_port(), "/readyz").status, 200);
  EXPECT_EQ(HttpGet(server->metrics_port(), "/nothing").status, 404);
}

// Issue #15 point 6: the standard families, every known label value from
// zero, gRPC calls counted per code, open watch streams.
TEST_F(TailordTest, StandardMetricsExistFromZeroAndCountPerCode) {
  auto server = Start({"--max-concurrent-jobs", "1"});
  ASSERT_TRUE(server->ok());
  const std::string before = HttpGet(server->metrics_port(), "/metrics").body;
  for (const char* family :
       {"process_cpu_seconds_total counter",
        "process_resident_memory_bytes "
        "gauge",
        "process_virtual_memory_bytes gauge",
        "process_start_time_seconds gauge", "process_open_fds gauge",
        "process_max_fds gauge", "grpc_server_started_total counter",
        "grpc_server_handled_total counter",
        "grpc_server_msg_received_total counter",
        "grpc_server_msg_sent_total counter",
        "grpc_server_handling_seconds histogram", "tailor_build_info gauge",
        "tailor_watch_streams gauge", "tailor_result_streams gauge",
        "tailor_data_volume_size_bytes gauge",
        "tailor_data_volume_free_bytes gauge",
        "tailor_data_dir_used_bytes gauge", "tailor_journal_used_bytes gauge",
        "tailor_journal_free_bytes gauge"}) {
    EXPECT_TRUE(
        absl::StrContains(before, absl::StrCat("# TYPE ", family, "\n")))
        << family;
  }
  const std::string get_labels =
      "grpc_type=\"unary\",grpc_service=\"tailor.v1.FusionService\","
      "grpc_method=\"GetFusionJob\"";
  for (const std::string& line : std::vector<std::string>{
           "tailor_jobs_finished_total{outcome=\"failed\"} 0",
           "tailor_jobs_finished_total{outcome=\"cancelled\"} 0",
           "tailor_job_duration_seconds_count{outcome=\"failed\"} 0",
           "tailor_validation_failures_total{reason=\"invalid_argument\"} 0",
           "tailor_rpcs_total{method=\"GetFusionJob\",code=\"ok\"} 0",
           "tailor_jobs{state=\"failed\"} 0", "tailor_watch_streams 0",
           "tailor_result_streams 0",
           "grpc_server_started_total{" + get_labels + "} 0",
           "grpc_server_handled_total{" + get_labels +
               ",grpc_code=\"NotFound\"} 0",
           "grpc_server_handled_total{" + get_labels + ",grpc_code=\"OK\"} 0",
           "grpc_server_handled_total{grpc_type=\"unary\",grpc_service="
           "\"grpc.health.v1.Health\",grpc_method=\"Check\",grpc_code="
           "\"Unavailable\"} 0",
           "grpc_server_handled_total{grpc_type=\"bidi_stream\",grpc_service="
           "\"grpc.reflection.v1.ServerReflection\",grpc_method="
           "\"ServerReflectionInfo\",grpc_code=\"OK\"} 0",
           "grpc_server_handling_seconds_count{" + get_labels + "} 0",
           "tailor_journal_used_bytes 0"}) {
    EXPECT_TRUE(absl::StrContains(before, line + "\n")) << "missing: " << line;
  }
  EXPECT_TRUE(absl::StrContains(before,
                                "tailor_build_info{version=\"0.1.0\","
                                "revision=\""));
  EXPECT_FALSE(absl::StrContains(before, "revision=\"\"}"));
  testing::CommandResult promtool = testing::RunWithInput(
      std::string(TAILOR_PROMTOOL) + " check metrics", before, tmp_.path());
  EXPECT_EQ(promtool.code, 0) << promtool.output;

  // One GetFusionJob of a job that does not exist: NotFound.
  v1::FusionJob missing;
  {
    grpc::ClientContext context;
    context.set_deadline(std::chrono::system_clock::now() +
                         std::chrono::seconds(30));
    v1::GetFusionJobRequest request;
    request.set_name("fusionJobs/0000000000000000");
    EXPECT_EQ(stub_->GetFusionJob(&context, request, &missing).error_code(),
              grpc::NOT_FOUND);
  }
  const std::string after = HttpGet(server->metrics_port(), "/metrics").body;
  for (const std::string& line : std::vector<std::string>{
           "grpc_server_started_total{" + get_labels + "} 1",
           "grpc_server_handled_total{" + get_labels +
               ",grpc_code=\"NotFound\"} 1",
           "grpc_server_handled_total{" + get_labels + ",grpc_code=\"OK\"} 0",
           "grpc_server_msg_received_total{" + get_labels + "} 1",
           "grpc_server_handling_seconds_count{" + get_labels + "} 1",
           "grpc_server_handling_seconds_bucket{" + get_labels +
               ",le=\"+Inf\"} 1"}) {
    EXPECT_TRUE(absl::StrContains(after, line + "\n")) << "missing: " << line;
  }
  EXPECT_EQ(
      testing::RunWithInput(std::string(TAILOR_PROMTOOL) + " check metrics",
                            after, tmp_.path())
          .code,
      0);

  // An open watch is counted while open. Two slow jobs, one at a time:
  // the watch of the second stays open while both run (seconds even on a
  // fast machine; a loaded one stretches it).
  v1::FusionJob first, second;
  ASSERT_TRUE(Create(SlowSpec("gauge-1"), &first).ok());
  ASSERT_TRUE(Create(SlowSpec("gauge-2"), &second).ok());
  auto watch_context = std::make_unique<grpc::ClientContext>();
  v1::WatchFusionJobRequest request;
  request.set_name(second.name());
  auto reader = stub_->WatchFusionJob(watch_context.get(), request);
  v1::JobEvent event;
  ASSERT_TRUE(reader->Read(&event));
  auto metrics_soon = [&](const std::string& line) {
    const auto deadline =
        std::chrono::steady_clock::now() + std::chrono::seconds(60);
    std::string text;
    while (std::chrono::steady_clock::now() < deadline) {
      text = HttpGet(server->metrics_port(), "/metrics").body;
      if (absl::StrContains(text, line + "\n")) return true;
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    ADD_FAILURE() << "missing: " << line << "\n" << text;
    return false;
  };
  const std::string watch_labels =
      "grpc_type=\"server_stream\",grpc_service=\"tailor.v1.FusionService\","
      "grpc_method=\"WatchFusionJob\"";
  EXPECT_TRUE(metrics_soon("tailor_watch_streams 1"));
  EXPECT_TRUE(
      metrics_soon("grpc_server_started_total{" + watch_labels + "} 1"));
  watch_context->TryCancel();
  while (reader->Read(&event)) {
  }
  EXPECT_EQ(reader->Finish().error_code(), grpc::CANCELLED);
  EXPECT_TRUE(metrics_soon("tailor_watch_streams 0"));
  EXPECT_TRUE(metrics_soon("grpc_server_handled_total{" + watch_labels +
                           ",grpc_code=\"Canceled\"} 1"));
}

// Issue #15 point 7: grpc.reflection.v1 beside v1alpha; a client that knows
// only what reflection tells it resolves the API and calls Health.Check.
TEST_F(TailordTest, ReflectionV1ResolvesTheApiAndHealth) {
  auto server = Start();
  ASSERT_TRUE(server->ok());
  auto channel = grpc::CreateChannel(server->address(),
                                     grpc::InsecureChannelCredentials());
  absl::StatusOr<testing::ReflectionAnswers> answers = testing::AskReflectionV1(
      channel, {"tailor.v1.FusionService", "tailor.v1.FusionJob",
                "grpc.health.v1.Health"});
  ASSERT_TRUE(answers.ok()) << answers.status();
  for (const char* service :
       {"tailor.v1.FusionService", "grpc.health.v1.Health",
        "grpc.reflection.v1.ServerReflection",
        "grpc.reflection.v1alpha.ServerReflection"}) {
    EXPECT_NE(
        std::find(answers->services.begin(), answers->services.end(), service),
        answers->services.end())
        << service;
  }
  for (size_t i = 0; i < 3; ++i) {
    EXPECT_EQ(answers->errors[i], 0) << i;
    EXPECT_FALSE(answers->files[i].empty()) << i;
  }
  absl::StatusOr<std::string> serving =
      testing::HealthCheckByReflection(channel, "tailor.v1.FusionService");
  ASSERT_TRUE(serving.ok()) << serving.status();
  EXPECT_EQ(*serving, "SERVING");
  serving = testing::HealthCheckByReflection(channel, "");
  ASSERT_TRUE(serving.ok()) << serving.status();
  EXPECT_EQ(*serving, "SERVING");

  // --reflection=false turns off v1 as well.
  server.reset();
  auto quiet = Start({"--reflection=false"});
  ASSERT_TRUE(quiet->ok());
  absl::StatusOr<testing::ReflectionAnswers> none = testing::AskReflectionV1(
      grpc::CreateChannel(quiet->address(), grpc::InsecureChannelCredentials()),
      {});
  EXPECT_EQ(none.status().code(), absl::StatusCode::kUnimplemented)
      << none.status();
}

}  // namespace
}  // namespace tailor
