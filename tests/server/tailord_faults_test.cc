// tailord under hostile input and faults (issue #10): watches past the end,
// idle connections to the metrics port, a cancel then a crash, jobs that
// crash the server, journal limits, a store that lost acknowledged jobs,
// unread result streams, page tokens used with another filter.

#include <arpa/inet.h>
#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <iostream>
#include <limits>
#include <thread>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "tailord_fixture.h"
#include "util/file_util.h"

namespace tailor {
namespace {

// VmRSS of process `pid`, KiB (0 if unknown).
int64_t ResidentKib(pid_t pid) {
  const std::string status =
      ReadFileOrDie(absl::StrCat("/proc/", pid, "/status"));
  const size_t at = status.find("VmRSS:");
  if (at == std::string::npos) return 0;
  int64_t kib = 0;
  std::string digits;
  for (size_t i = at + 6; i < status.size() && status[i] != '\n'; ++i) {
    if (status[i] >= '0' && status[i] <= '9') digits += status[i];
  }
  return absl::SimpleAtoi(digits, &kib) ? kib : 0;
}

// Point 10: after_sequence = INT64_MAX with a dozen jobs stored.
TEST_F(TailordTest, WatchAfterInt64MaxEndsWithoutEvents) {
  auto server = Start({"--max-concurrent-jobs", "2"});
  ASSERT_TRUE(server->ok());
  std::vector<std::string> names;
  for (int i = 0; i < 12; ++i) {
    v1::FusionJob job;
    ASSERT_TRUE(Create(Spec(absl::StrCat("many", i)), &job).ok());
    names.push_back(job.name());
  }
  for (const std::string& n : names) {
    ASSERT_EQ(WaitUntil(n, IsTerminal).state(), v1::SUCCEEDED);
  }
  const int64_t max = std::numeric_limits<int64_t>::max();
  for (const std::string& n : {names.front(), names.back()}) {
    for (int64_t after : {max, max - 1, int64_t{1} << 62}) {
      grpc::Status status;
      std::vector<v1::JobEvent> events = Watch(n, after, &status);
      EXPECT_TRUE(status.ok()) << after << ": " << status.error_message();
      EXPECT_TRUE(events.empty()) << after;
    }
  }
  CliResult watch =
      Tailorctl({"watch", names[5], "--after", "9223372036854775807",
                 "--server", server->address(), "-q"});
  EXPECT_EQ(watch.code, 0) << watch.out << watch.err;
  EXPECT_TRUE(watch.out.empty()) << watch.out;
  // Still serving, same process.
  EXPECT_EQ(Get(names[5]).state(), v1::SUCCEEDED);
  EXPECT_EQ(::kill(server->pid(), 0), 0);
}

// Point 12: idle connections must not delay the liveness probe.
TEST_F(TailordTest, HealthzAnswersPromptlyWithIdleConnectionsOpen) {
  auto server = Start();
  ASSERT_TRUE(server->ok());
  std::vector<ScopedFd> idle;
  for (int i = 0; i < 16; ++i) {
    const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
    ASSERT_GE(fd, 0);
    idle.emplace_back(fd);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_port = htons(static_cast<uint16_t>(server->metrics_port()));
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    ASSERT_EQ(::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)),
              0);
  }
  std::this_thread::sleep_for(std::chrono::milliseconds(200));
  for (const char* path : {"/healthz", "/readyz", "/healthz"}) {
    const auto t0 = std::chrono::steady_clock::now();
    testing::HttpResponse r = HttpGet(server->metrics_port(), path);
    const double seconds =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - t0)
            .count();
    EXPECT_EQ(r.status, 200) << path;
    // It took 19.5 s with 8 idle connections before the fix.
    EXPECT_LT(seconds, 5.0) << path;
    std::cout << "16 idle connections: " << path << " in " << seconds << " s\n";
  }
}

// Point 13: a cancel acknowledged for a RUNNING job survives a SIGKILL.
TEST_F(TailordTest, CancelThenSigkillEndsCancelledAfterTheRestart) {
  std::string name;
  {
    auto server = Start();
    ASSERT_TRUE(server->ok());
    v1::FusionJob job;
    ASSERT_TRUE(Create(SlowSpec("cancel-kill"), &job).ok());
    name = job.name();
    v1::FusionJob seen = WaitUntil(name, [](const v1::FusionJob& j) {
      return j.progress().tensors_done() >= 1 || IsTerminal(j);
    });
    ASSERT_EQ(seen.state(), v1::RUNNING);
    grpc::ClientContext context;
    v1::CancelFusionJobRequest request;
    request.set_name(name);
    v1::FusionJob cancelled;
    ASSERT_TRUE(stub_->CancelFusionJob(&context, request, &cancelled).ok());
    EXPECT_TRUE(cancelled.cancel_requested());
    server->Stop(SIGKILL);  // at once: the run has not ended yet
  }
  auto server = Start();
  ASSERT_TRUE(server->ok());
  v1::FusionJob done = WaitUntil(name, IsTerminal);
  EXPECT_EQ(done.state(), v1::CANCELLED) << done.error_message();
  grpc::Status status;
  std::vector<v1::JobEvent> all = Watch(name, 0, &status);
  ASSERT_TRUE(status.ok());
  ExpectGapFree(all, 1);
  ASSERT_FALSE(all.empty());
  EXPECT_EQ(all.back().state_change().state(), v1::CANCELLED);
  int runs = 0;
  for (const v1::JobEvent& e : all) {
    runs += e.has_state_change() && e.state_change().state() == v1::RUNNING;
  }
  EXPECT_EQ(runs, 1);  // never run again
  std::cout << "cancel then SIGKILL: "
            << (absl::StrContains(done.error_message(), "server stopped")
                    ? "cancelled at the restart"
                    : "the run ended before the kill")
            << "\n";
  EXPECT_FALSE(PathExists(tmp_.Join("cancel-kill-fused")));
  EXPECT_FALSE(PathExists(tmp_.Join("cancel-kill.patch.safetensors")));
  EXPECT_FALSE(PathExists(tmp_.Join("cancel-kill.report.json")));
  EXPECT_TRUE(GoneSoon(JournalDir(name)));
}

// Poisoned jobs: killed twice while running, the job is FAILED at the next
// start instead of running (and crashing the server) again.
TEST_F(TailordTest, JobTheServerDiedRunningTwiceIsFailedAtStartup) {
  std::string name;
  for (int kill = 0; kill < 2; ++kill) {
    auto server = Start();
    ASSERT_TRUE(server->ok());
    if (name.empty()) {
      v1::FusionJob job;
      ASSERT_TRUE(Create(SlowSpec("poisoned"), &job).ok());
      name = job.name();
    }
    v1::FusionJob seen = WaitUntil(name, [](const v1::FusionJob& j) {
      return (j.state() == v1::RUNNING && j.progress().tensors_done() >= 1) ||
             IsTerminal(j);
    });
    ASSERT_EQ(seen.state(), v1::RUNNING);
    server->Stop(SIGKILL);
  }
  auto server = Start();
  ASSERT_TRUE(server->ok());
  v1::FusionJob job = Get(name);
  EXPECT_EQ(job.state(), v1::FAILED);
  EXPECT_TRUE(absl::StartsWith(
      job.error_message(),
      "the server stopped twice while running this job; not retried"))
      << job.error_message();
  EXPECT_TRUE(absl::StrContains(server->Log(), "not retried"));
  EXPECT_FALSE(PathExists(tmp_.Join("poisoned.patch.safetensors")));
  EXPECT_TRUE(GoneSoon(JournalDir(name)));
}

// Point 14: the journal cannot take the data volume; the job goes on
// without it and succeeds.
TEST_F(TailordTest, JournalLimitsLetTheJobContinueWithoutItsJournal) {
  for (const std::vector<std::string>& flags :
       {std::vector<std::string>{"--journal-max-bytes", "1"},
        std::vector<std::string>{"--journal-reserve-bytes",
                                 "4000000000000000000"}}) {
    auto server = Start(flags);
    ASSERT_TRUE(server->ok());
    v1::FusionJob job;
    ASSERT_TRUE(Create(Spec("budget" + flags[0]), &job).ok());
    v1::FusionJob done = WaitUntil(job.name(), IsTerminal);
    ASSERT_EQ(done.state(), v1::SUCCEEDED) << done.error_message();
    grpc::Status status;
    std::vector<v1::JobEvent> all = Watch(job.name(), 0, &status);
    ASSERT_TRUE(status.ok());
    std::string warning;
    for (const v1::JobEvent& e : all) {
      if (e.has_warning() &&
          absl::StrContains(e.warning(), "continuing without the journal")) {
        warning = e.warning();
      }
    }
    EXPECT_TRUE(absl::StrContains(warning, flags[0] == "--journal-max-bytes"
                                               ? "budget of 1 bytes"
                                               : "kept for the job store"))
        << flags[0] << ": " << warning;
    EXPECT_TRUE(GoneSoon(JournalDir(job.name())));
  }
}

// Point 16: a store that lost acknowledged jobs is refused, loudly; an
// intact one starts and does not re-run anything.
TEST_F(TailordTest, StoreThatLostJobsIsRefusedAtStartup) {
  std::vector<std::string> names;
  {
    auto server = Start();
    ASSERT_TRUE(server->ok());
    for (int i = 0; i < 2; ++i) {
      v1::FusionJob job;
      ASSERT_TRUE(Create(Spec(absl::StrCat("kept", i)), &job).ok());
      names.push_back(job.name());
    }
    for (const std::string& n : names) {
      ASSERT_EQ(WaitUntil(n, IsTerminal).state(), v1::SUCCEEDED);
    }
    server->Stop(SIGKILL);
  }
  const std::string data = tmp_.Join("data");
  ASSERT_TRUE(PathExists(data + "/store.id"));
  ASSERT_TRUE(PathExists(data + "/jobs.db-wal"));  // a crash leaves it
  auto copy = [&](const std::string& to) {
    ASSERT_EQ(
        std::system(absl::StrCat("cp -a '", data, "' '", to, "'").c_str()), 0);
  };
  const std::string truncated = tmp_.Join("data-truncated");
  const std::string no_wal = tmp_.Join("data-no-wal");
  const std::string bad_wal = tmp_.Join("data-bad-wal");
  copy(truncated);
  copy(no_wal);
  copy(bad_wal);
  ASSERT_EQ(::truncate((truncated + "/jobs.db").c_str(), 0), 0);
  ASSERT_EQ(::unlink((no_wal + "/jobs.db-wal").c_str()), 0);
  {
    std::string wal = ReadFileOrDie(bad_wal + "/jobs.db-wal");
    ASSERT_GT(wal.size(), 32u);
    for (int i = 24; i < 32; ++i) wal[i] ^= 0x5a;  // its header checksum
    WriteFileOrDie(bad_wal + "/jobs.db-wal", wal);
  }
  for (const std::string& dir : {truncated, no_wal, bad_wal}) {
    TailordProcess p(dir, {"--allowed-root", tmp_.path()}, tmp_.path());
    EXPECT_FALSE(p.ok()) << dir;
    EXPECT_EQ(p.early_exit(), 1) << dir << ": " << p.failure();
    const std::string log = p.Log();
    EXPECT_TRUE(absl::StrContains(log, dir + "/jobs.db")) << log;
    EXPECT_TRUE(absl::StrContains(log, "refusing to start")) << log;
    EXPECT_TRUE(absl::StrContains(log, "move jobs.db")) << log;
  }
  // The intact store starts: both jobs still SUCCEEDED, nothing re-ran.
  auto server = Start();
  ASSERT_TRUE(server->ok());
  for (const std::string& n : names) {
    v1::FusionJob job = Get(n);
    EXPECT_EQ(job.state(), v1::SUCCEEDED) << job.error_message();
    grpc::Status status;
    std::vector<v1::JobEvent> all = Watch(n, 0, &status);
    ASSERT_TRUE(status.ok());
    EXPECT_EQ(all.back().state_change().state(), v1::SUCCEEDED);
  }
}

// Point 18: unread result streams are capped, and the server's memory
// stays bounded.
TEST_F(TailordTest, UnreadResultStreamsAreCapped) {
  auto server = Start({"--max-result-streams", "8"});
  ASSERT_TRUE(server->ok());
  v1::FusionJob job;
  ASSERT_TRUE(Create(SlowSpec("streams"), &job).ok());
  ASSERT_EQ(WaitUntil(job.name(), IsTerminal).state(), v1::SUCCEEDED);
  const std::string patch =
      ReadFileOrDie(tmp_.Join("streams.patch.safetensors"));
  // A reader that never reads: a small window, no growth.
  grpc::ChannelArguments args;
  args.SetInt(GRPC_ARG_HTTP2_BDP_PROBE, 0);
  args.SetInt(GRPC_ARG_HTTP2_STREAM_LOOKAHEAD_BYTES, 16 << 10);
  auto channel = grpc::CreateCustomChannel(
      server->address(), grpc::InsecureChannelCredentials(), args);
  auto stub = v1::FusionService::NewStub(channel);
  v1::ReadJobResultRequest request;
  request.set_name(job.name());
  request.set_kind(v1::ReadJobResultRequest::PATCH);
  const int64_t rss_before = ResidentKib(server->pid());
  struct Stream {
    grpc::ClientContext context;
    std::unique_ptr<grpc::ClientReader<v1::ResultChunk>> reader;
  };
  std::vector<std::unique_ptr<Stream>> held;
  for (int i = 0; i < 8; ++i) {
    auto s = std::make_unique<Stream>();
    s->reader = stub->ReadJobResult(&s->context, request);
    held.push_back(std::move(s));
  }
  std::this_thread::sleep_for(std::chrono::seconds(1));
  int refused = 0;
  for (int i = 0; i < 24; ++i) {
    grpc::ClientContext context;
    context.set_deadline(std::chrono::system_clock::now() +
                         std::chrono::seconds(30));
    auto reader = stub->ReadJobResult(&context, request);
    v1::ResultChunk chunk;
    while (reader->Read(&chunk)) {
    }
    grpc::Status status = reader->Finish();
    if (status.error_code() == grpc::StatusCode::RESOURCE_EXHAUSTED) {
      ++refused;
      EXPECT_TRUE(
          absl::StrContains(status.error_message(), "max-result-streams"))
          << status.error_message();
    }
  }
  EXPECT_EQ(refused, 24) << "the patch (" << patch.size()
                         << " bytes) must outgrow the readers' window";
  const int64_t rss_after = ResidentKib(server->pid());
  std::cout << "8 unread streams of a " << patch.size()
            << "-byte patch, 24 refused: server RSS " << rss_before << " -> "
            << rss_after << " KiB\n";
  EXPECT_LT(rss_after - rss_before, 256 << 10);  // < 256 MiB
  for (auto& s : held) s->context.TryCancel();
  for (auto& s : held) s->reader->Finish();
  held.clear();
  // The slots come back: a reader that reads gets the whole patch.
  std::string got;
  grpc::Status last;
  for (int attempt = 0; attempt < 300; ++attempt) {
    grpc::ClientContext context;
    context.set_deadline(std::chrono::system_clock::now() +
                         std::chrono::seconds(30));
    auto reader = stub_->ReadJobResult(&context, request);
    v1::ResultChunk chunk;
    got.clear();
    while (reader->Read(&chunk)) got += chunk.data();
    last = reader->Finish();
    if (last.error_code() != grpc::StatusCode::RESOURCE_EXHAUSTED) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  ASSERT_TRUE(last.ok()) << last.error_message();
  EXPECT_EQ(got, patch);
}

// Points 15 and 22 over gRPC: same-key terms AND; a page token is bound to
// its filter.
TEST_F(TailordTest, FiltersAndPageTokensOverGrpc) {
  auto server = Start();
  ASSERT_TRUE(server->ok());
  std::vector<std::string> names;
  for (const char* team : {"a", "b", "a"}) {
    grpc::ClientContext context;
    v1::CreateFusionJobRequest request;
    *request.mutable_spec() = Spec(absl::StrCat("team-", names.size()));
    (*request.mutable_labels())["team"] = team;
    v1::FusionJob job;
    ASSERT_TRUE(stub_->CreateFusionJob(&context, request, &job).ok());
    names.push_back(job.name());
  }
  for (const std::string& n : names) WaitUntil(n, IsTerminal);
  auto list = [&](const std::string& filter, const std::string& token,
                  v1::ListFusionJobsResponse* response) {
    grpc::ClientContext context;
    v1::ListFusionJobsRequest request;
    request.set_filter(filter);
    request.set_page_token(token);
    request.set_page_size(1);
    return stub_->ListFusionJobs(&context, request, response);
  };
  v1::ListFusionJobsResponse r;
  ASSERT_TRUE(list("labels.team=a AND labels.team=b", "", &r).ok());
  EXPECT_EQ(r.fusion_jobs_size(), 0);
  ASSERT_TRUE(list("state=SUCCEEDED AND state=QUEUED", "", &r).ok());
  EXPECT_EQ(r.fusion_jobs_size(), 0);
  v1::ListFusionJobsResponse first;
  ASSERT_TRUE(list("labels.team=a", "", &first).ok());
  ASSERT_EQ(first.fusion_jobs_size(), 1);
  ASSERT_FALSE(first.next_page_token().empty());
  v1::ListFusionJobsResponse second;
  ASSERT_TRUE(list("labels.team=a", first.next_page_token(), &second).ok());
  ASSERT_EQ(second.fusion_jobs_size(), 1);
  EXPECT_EQ(second.fusion_jobs(0).name(), names[0]);
  grpc::Status s = list("labels.team=b", first.next_page_token(), &r);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_TRUE(absl::StartsWith(s.error_message(), "page_token: "))
      << s.error_message();
}

}  // namespace
}  // namespace tailor
