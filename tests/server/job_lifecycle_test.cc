// Issue #17 points 7 and 8 against a real tailord: deleting finished jobs
// (gRPC and `tailorctl delete`), the retention sweep, and a `tailorctl
// watch` that survives the server being killed and restarted.

#include <arpa/inet.h>
#include <fcntl.h>
#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <limits>
#include <set>
#include <thread>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "google/protobuf/empty.pb.h"
#include "tailord_fixture.h"

namespace tailor {
namespace {

// The sequence numbers of the "#N ..." event lines `tailorctl watch` printed.
std::vector<int64_t> PrintedSequences(const std::string& out) {
  std::vector<int64_t> seqs;
  for (absl::string_view line : absl::StrSplit(out, '\n')) {
    if (!absl::StartsWith(line, "#")) continue;
    const size_t space = line.find(' ');
    int64_t n = 0;
    if (absl::SimpleAtoi(line.substr(1, space - 1), &n)) seqs.push_back(n);
  }
  return seqs;
}

// A TCP proxy on loopback that, like a load balancer with an idle timeout,
// closes a connection after `idle` without a byte in either direction.
class IdleCuttingProxy {
 public:
  IdleCuttingProxy(int upstream_port, std::chrono::milliseconds idle)
      : upstream_port_(upstream_port), idle_(idle) {
    listen_fd_ = ::socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in addr = {};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof(addr);
    if (::bind(listen_fd_, reinterpret_cast<sockaddr*>(&addr), len) != 0 ||
        ::listen(listen_fd_, 16) != 0 ||
        ::getsockname(listen_fd_, reinterpret_cast<sockaddr*>(&addr), &len) !=
            0) {
      return;
    }
    port_ = ntohs(addr.sin_port);
    acceptor_ = std::thread([this] { Accept(); });
  }
  ~IdleCuttingProxy() {
    stop_.store(true);
    ::shutdown(listen_fd_, SHUT_RDWR);
    if (acceptor_.joinable()) acceptor_.join();
    for (std::thread& t : pipes_) t.join();
    ::close(listen_fd_);
  }
  std::string address() const { return absl::StrCat("127.0.0.1:", port_); }
  int cuts() const { return cuts_.load(); }

 private:
  void Accept() {
    while (!stop_.load()) {
      pollfd p = {listen_fd_, POLLIN, 0};
      if (::poll(&p, 1, 100) <= 0) continue;
      const int client = ::accept(listen_fd_, nullptr, nullptr);
      if (client < 0) continue;
      pipes_.emplace_back([this, client] { Pipe(client); });
    }
  }
  void Pipe(int client) {
    const int up = ::socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in addr = {};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    addr.sin_port = htons(static_cast<uint16_t>(upstream_port_));
    if (::connect(up, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0) {
      auto last = std::chrono::steady_clock::now();
      char buf[1 << 14];
      while (!stop_.load()) {
        pollfd p[2] = {{client, POLLIN, 0}, {up, POLLIN, 0}};
        ::poll(p, 2, 50);
        bool closed = false;
        for (int i = 0; i < 2; ++i) {
          if (!(p[i].revents & (POLLIN | POLLHUP | POLLERR))) continue;
          const ssize_t n = ::read(p[i].fd, buf, sizeof(buf));
          if (n <= 0 || ::send(p[1 - i].fd, buf, static_cast<size_t>(n),
                               MSG_NOSIGNAL) != n) {
            closed = true;
            break;
          }
          last = std::chrono::steady_clock::now();
        }
        if (closed) break;
        if (std::chrono::steady_clock::now() - last > idle_) {
          ++cuts_;
          break;
        }
      }
    }
    ::close(up);
    ::close(client);
  }

  const int upstream_port_;
  const std::chrono::milliseconds idle_;
  int listen_fd_ = -1, port_ = 0;
  std::atomic<bool> stop_{false};
  std::atomic<int> cuts_{0};
  std::thread acceptor_;
  std::vector<std::thread> pipes_;  // only the acceptor touches it
};

class JobLifecycleTest : public TailordTest {
 protected:
  grpc::Status Delete(const std::string& name) {
    grpc::ClientContext context;
    context.set_deadline(std::chrono::system_clock::now() +
                         std::chrono::seconds(60));
    v1::DeleteFusionJobRequest request;
    request.set_name(name);
    google::protobuf::Empty empty;
    return stub_->DeleteFusionJob(&context, request, &empty);
  }
  grpc::Status GetStatus(const std::string& name) {
    grpc::ClientContext context;
    v1::GetFusionJobRequest request;
    request.set_name(name);
    v1::FusionJob job;
    return stub_->GetFusionJob(&context, request, &job);
  }
};

// Point 7: only finished jobs can be deleted; a deleted job is gone from
// every call, the metrics and the store (across a restart); its outputs
// stay. The retention sweep deletes old finished jobs at startup.
TEST_F(JobLifecycleTest, DeleteFinishedJobsKeepsOutputsAndRetentionSweeps) {
  auto server = Start();  // one job at a time
  ASSERT_TRUE(server->ok());
  v1::FusionJob done, slow, queued;
  ASSERT_TRUE(Create(Spec("kept"), &done).ok());
  WaitDone(done.name());
  ASSERT_EQ(Get(done.name()).state(), v1::SUCCEEDED);
  // `queued` waits behind `slow` (hundreds of fsynced tensor events), so it
  // is still QUEUED when the deletes below arrive.
  ASSERT_TRUE(Create(SlowSpec("slow"), &slow).ok());
  ASSERT_TRUE(Create(SlowSpec("queued"), &queued).ok());
  WaitUntil(slow.name(), [](const v1::FusionJob& j) {
    return j.progress().tensors_done() >= 1 || IsTerminal(j);
  });

  // An unfinished job: FAILED_PRECONDITION over gRPC, exit 3 from tailorctl.
  grpc::Status s = Delete(queued.name());
  ASSERT_FALSE(IsTerminal(Get(queued.name())));
  EXPECT_EQ(s.error_code(), grpc::StatusCode::FAILED_PRECONDITION)
      << s.error_message();
  EXPECT_TRUE(absl::StrContains(s.error_message(), "cancel it first"))
      << s.error_message();
  CliResult r =
      Tailorctl({"delete", queued.name(), "--server", server->address()});
  ASSERT_FALSE(IsTerminal(Get(queued.name())));
  EXPECT_EQ(r.code, 3) << r.err;
  EXPECT_TRUE(absl::StrContains(r.err, "only finished jobs")) << r.err;
  EXPECT_EQ(Get(queued.name()).name(), queued.name());  // still there
  // Missing and malformed names.
  CliResult missing =
      Tailorctl({"delete", "0123456789abcdef", "--server", server->address()});
  EXPECT_EQ(missing.code, 4) << missing.err;
  EXPECT_EQ(Delete("fusionJobs/../x").error_code(),
            grpc::StatusCode::INVALID_ARGUMENT);

  // The finished job, by bare id.
  const std::string id = done.name().substr(done.name().find('/') + 1);
  CliResult deleted = Tailorctl({"delete", id, "--server", server->address()});
  ASSERT_EQ(deleted.code, 0) << deleted.err;
  EXPECT_EQ(deleted.out, absl::StrCat("deleted ", done.name(), "\n"));
  EXPECT_EQ(GetStatus(done.name()).error_code(), grpc::StatusCode::NOT_FOUND);
  grpc::Status watch_status;
  EXPECT_TRUE(Watch(done.name(), 0, &watch_status).empty());
  EXPECT_EQ(watch_status.error_code(), grpc::StatusCode::NOT_FOUND);
  CliResult again = Tailorctl({"delete", id, "--server", server->address()});
  EXPECT_EQ(again.code, 4) << again.err;
  CliResult list = Tailorctl({"list", "--server", server->address()});
  EXPECT_FALSE(absl::StrContains(list.out, id)) << list.out;
  EXPECT_TRUE(absl::StrContains(list.out, slow.name().substr(11))) << list.out;
  // Outputs are never touched.
  EXPECT_TRUE(PathExists(tmp_.Join("kept-fused/model.safetensors")));
  EXPECT_TRUE(PathExists(tmp_.Join("kept.patch.safetensors")));
  EXPECT_TRUE(PathExists(tmp_.Join("kept.report.json")));
  EXPECT_TRUE(absl::StrContains(server->Log(), "method=DeleteFusionJob"))
      << server->Log();

  // Once the other two finished, the metrics count them and not the
  // deleted one.
  const v1::FusionJob slow_done = WaitUntil(slow.name(), IsTerminal);
  const v1::FusionJob queued_done = WaitUntil(queued.name(), IsTerminal);
  ASSERT_EQ(slow_done.state(), v1::SUCCEEDED) << slow_done.error_message();
  ASSERT_EQ(queued_done.state(), v1::SUCCEEDED) << queued_done.error_message();
  const std::string metrics = HttpGet(server->metrics_port(), "/metrics").body;
  EXPECT_TRUE(absl::StrContains(metrics, "tailor_jobs{state=\"succeeded\"} 2"))
      << metrics;
  EXPECT_TRUE(absl::StrContains(
      metrics, "tailor_jobs_deleted_total{reason=\"request\"} 1"))
      << metrics;

  // Gone after a restart too.
  server->Stop(SIGTERM);
  server = Start();
  ASSERT_TRUE(server->ok());
  EXPECT_EQ(GetStatus(done.name()).error_code(), grpc::StatusCode::NOT_FOUND);
  EXPECT_EQ(Get(slow.name()).state(), v1::SUCCEEDED);
  server->Stop(SIGTERM);

  // --job-retention: jobs finished longer ago are deleted at startup, with
  // an audit line each; their outputs stay.
  std::this_thread::sleep_for(std::chrono::milliseconds(2100));
  server = Start({"--job-retention", "2s"});
  ASSERT_TRUE(server->ok());
  EXPECT_EQ(GetStatus(slow.name()).error_code(), grpc::StatusCode::NOT_FOUND);
  EXPECT_EQ(GetStatus(queued.name()).error_code(), grpc::StatusCode::NOT_FOUND);
  const std::string log = server->Log();
  EXPECT_TRUE(absl::StrContains(log, "method=RetentionSweep")) << log;
  EXPECT_TRUE(absl::StrContains(log, slow.name())) << log;
  EXPECT_TRUE(
      absl::StrContains(HttpGet(server->metrics_port(), "/metrics").body,
                        "tailor_jobs_deleted_total{reason=\"retention\"} 2"));
  EXPECT_TRUE(PathExists(tmp_.Join("slow.patch.safetensors")));
  EXPECT_TRUE(PathExists(tmp_.Join("queued-fused/model.safetensors")));
}

// Point 8: tailord is SIGKILLed and restarted on the same port and data
// directory mid-watch; `tailorctl watch` notes the loss, reconnects by
// itself and prints the whole event sequence, gap-free and without
// repeats, to the job's end.
TEST_F(JobLifecycleTest, WatchResumesAcrossAKilledAndRestartedServer) {
  // One kill is within --max-interrupted-runs' default; be explicit.
  const std::vector<std::string> flags = {"--max-interrupted-runs", "4"};
  auto server = Start(flags);
  ASSERT_TRUE(server->ok());
  const int port = server->grpc_port();
  v1::FusionJob job;
  ASSERT_TRUE(Create(SlowSpec("resumed"), &job).ok());
  // Paused while tailorctl starts, so that the job cannot run to its end
  // before the watch is connected (tailorctl's start-up can take longer than
  // the job on a fast machine).
  ASSERT_EQ(::kill(server->pid(), SIGSTOP), 0);
  Background watch =
      SpawnTailorctl({"watch", job.name(), "--server", server->address(),
                      "--reconnect-timeout", "300"},
                     tmp_.path(), "resume");
  ASSERT_GT(watch.pid, 0);
  const bool watching = FileSoonContains(watch.err, "tailorctl: watching");
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  ::kill(server->pid(), SIGCONT);
  ASSERT_TRUE(watching) << Slurp(watch.err);
  // Some events are out (the job is running: RUNNING is #2).
  ASSERT_TRUE(FileSoonContains(watch.out, "\n#4 ")) << Slurp(watch.err);
  server->Stop(SIGKILL);
  // Long enough for the watch to notice and retry a few times.
  ASSERT_TRUE(FileSoonContains(watch.err, "lost the watch of"))
      << Slurp(watch.err);
  std::this_thread::sleep_for(std::chrono::seconds(1));
  std::vector<std::string> again = flags;
  again.insert(again.end(), {"--listen", absl::StrCat("127.0.0.1:", port)});
  server = Start(again);
  ASSERT_TRUE(server->ok());
  ASSERT_EQ(server->grpc_port(), port);

  const int code = WaitExit(watch.pid, 300);
  const std::string out = Slurp(watch.out), err = Slurp(watch.err);
  EXPECT_EQ(code, 0) << err;
  v1::FusionJob done = Get(job.name());
  EXPECT_EQ(done.state(), v1::SUCCEEDED) << done.error_message();
  const std::vector<int64_t> seqs = PrintedSequences(out);
  ASSERT_FALSE(seqs.empty()) << out;
  for (size_t i = 0; i < seqs.size(); ++i) {
    ASSERT_EQ(seqs[i], static_cast<int64_t>(i + 1))
        << "event " << i << " of the printed sequence\n"
        << out;
  }
  EXPECT_EQ(seqs.back(), done.last_sequence());
  // The restart shows in the events: requeued, then running again.
  EXPECT_TRUE(absl::StrContains(out, "QUEUED: the server stopped")) << out;
  EXPECT_TRUE(absl::StrContains(out, "SUCCEEDED")) << out;
  EXPECT_TRUE(absl::StrContains(err, "reconnected; resumed")) << err;

  // Without a server to come back to, the watch gives up after
  // --reconnect-timeout with exit 7 and says how to resume. The server is
  // paused first, so the watch is still waiting when it dies.
  v1::FusionJob orphan;
  ASSERT_TRUE(Create(SlowSpec("orphan"), &orphan).ok());
  ASSERT_EQ(::kill(server->pid(), SIGSTOP), 0);
  Background lost =
      SpawnTailorctl({"watch", orphan.name(), "--server", server->address(),
                      "--reconnect-timeout", "3"},
                     tmp_.path(), "lost");
  ASSERT_TRUE(FileSoonContains(lost.err, "tailorctl: watching"))
      << Slurp(lost.err);
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  server->Stop(SIGKILL);
  const int lost_code = WaitExit(lost.pid, 300);
  const std::string lost_err = Slurp(lost.err);
  EXPECT_EQ(lost_code, 7) << lost_err;
  EXPECT_TRUE(absl::StrContains(lost_err, "gave up reconnecting after 3 s"))
      << lost_err;
  EXPECT_TRUE(absl::StrContains(lost_err, "lost the watch of")) << lost_err;
  EXPECT_TRUE(
      absl::StrContains(lost_err, absl::StrCat("resume with: tailorctl watch ",
                                               orphan.name(), " --after ")))
      << lost_err;
  const std::vector<int64_t> lost_seqs = PrintedSequences(Slurp(lost.out));
  for (size_t i = 0; i < lost_seqs.size(); ++i) {
    EXPECT_EQ(lost_seqs[i], static_cast<int64_t>(i + 1));
  }
}

// Point 8: a watch with nothing to say for longer than a proxy's idle
// timeout survives it thanks to tailord's keepalive pings (unlimited while
// the stream carries no data); without them (the control, keepalive of an
// hour) the same proxy cuts it.
TEST_F(JobLifecycleTest, KeepalivePingsKeepAnIdleWatchThroughAProxy) {
  // 1920 tensors of exact float64 compensation on one compute thread: tens
  // of seconds even on an idle machine, longer than the idle period below.
  WriteCheckpoint("long-base", "long-ft", "long-h.safetensors", 1920, 64);
  v1::FusionJobSpec spec =
      Spec("long", "long-base", "long-ft", "long-h.safetensors");
  spec.set_compensation(v1::COMPENSATION_EXACT);
  spec.set_float64(true);
  for (const bool pings : {true, false}) {
    SCOPED_TRACE(pings ? "keepalive 1 s" : "keepalive 3600 s");
    auto server =
        Start({"--keepalive-time", pings ? "1" : "3600", "--keepalive-timeout",
               "10", "--threads", "1", "--cpu-workers", "1"});
    ASSERT_TRUE(server->ok());
    IdleCuttingProxy proxy(server->grpc_port(), std::chrono::seconds(3));
    v1::FusionJob job;
    spec.set_overwrite(true);  // whatever an earlier round left
    ASSERT_TRUE(Create(spec, &job).ok());
    WaitUntil(job.name(),
              [](const v1::FusionJob& j) { return j.state() == v1::RUNNING; });
    // After the last possible event: the stream stays silent until the job
    // ends.
    auto channel = grpc::CreateChannel(proxy.address(),
                                       grpc::InsecureChannelCredentials());
    auto stub = v1::FusionService::NewStub(channel);
    grpc::ClientContext context;
    context.set_deadline(std::chrono::system_clock::now() +
                         std::chrono::seconds(300));
    v1::WatchFusionJobRequest request;
    request.set_name(job.name());
    request.set_after_sequence(std::numeric_limits<int64_t>::max());
    std::atomic<bool> ended{false};
    grpc::Status status;
    std::thread reader([&] {
      auto r = stub->WatchFusionJob(&context, request);
      v1::JobEvent e;
      while (r->Read(&e)) {
      }
      status = r->Finish();
      ended.store(true);
    });
    // More than two idle timeouts.
    const auto until =
        std::chrono::steady_clock::now() + std::chrono::seconds(7);
    while (std::chrono::steady_clock::now() < until && !ended.load()) {
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    const bool job_running = Get(job.name()).state() == v1::RUNNING;
    const bool cut = ended.load();
    // End the job (the stream then ends OK if it is still up).
    grpc::ClientContext cancel_context;
    v1::CancelFusionJobRequest cancel;
    cancel.set_name(job.name());
    v1::FusionJob cancelled;
    stub_->CancelFusionJob(&cancel_context, cancel, &cancelled);
    reader.join();
    ASSERT_TRUE(job_running) << "the job ended within the idle period; make "
                                "it longer";
    if (pings) {
      EXPECT_FALSE(cut) << status.error_message();
      EXPECT_TRUE(status.ok()) << status.error_message();
      EXPECT_EQ(proxy.cuts(), 0);
    } else {
      EXPECT_TRUE(cut);
      EXPECT_EQ(status.error_code(), grpc::StatusCode::UNAVAILABLE)
          << status.error_message();
      EXPECT_GE(proxy.cuts(), 1);
    }
    WaitUntil(job.name(), [](const v1::FusionJob& j) {
      return j.state() == v1::CANCELLED || j.state() == v1::SUCCEEDED;
    });
  }
}

}  // namespace
}  // namespace tailor
