// tailord's drain against a real process: the streams open at SIGTERM end
// with UNAVAILABLE "the server is shutting down" sent by the service itself
// (not the CANCELLED of gRPC's Shutdown), and a second SIGTERM during the
// drain exits at once with status 3, leaving the job store as after SIGKILL
// (the interrupted job resumes from its journal after the restart).

#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>
#include <signal.h>

#include <atomic>
#include <chrono>
#include <iostream>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/match.h"
#include "tailor/v1/fusion_service.grpc.pb.h"
#include "tailord_fixture.h"
#include "testing/tailord_process.h"

namespace tailor {
namespace {

constexpr char kStreamsEnding[] =
    "draining: ending the open watch and result streams";

class TailordDrainTest : public TailordTest {
 protected:
  // A succeeded job whose patch takes several ReadJobResult chunks (1 MiB
  // each): 4 tensors of 1024 x 1024, every entry kept.
  std::string BigPatchJob() {
    WriteCheckpoint("big-base", "big-ft", "big-h.safetensors", 4, 1024);
    v1::FusionJobSpec spec =
        Spec("big", "big-base", "big-ft", "big-h.safetensors");
    spec.set_keep(1.0);
    spec.clear_out();
    spec.clear_report();
    v1::FusionJob job;
    const grpc::Status s = Create(spec, &job);
    EXPECT_TRUE(s.ok()) << s.error_message();
    const v1::FusionJob done = WaitDone(job.name());
    EXPECT_EQ(done.state(), v1::SUCCEEDED) << done.error_message();
    return job.name();
  }

  // Polls (up to 120 s) until tailord's log holds `text`.
  static bool LogSoonHas(const TailordProcess& server,
                         const std::string& text) {
    const auto deadline =
        std::chrono::steady_clock::now() + std::chrono::seconds(120);
    while (std::chrono::steady_clock::now() < deadline) {
      if (absl::StrContains(server.Log(), text)) return true;
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    return false;
  }
};

// A ReadJobResult stream that reads its first chunk, then stops reading
// until Resume(), then reads to the end. Its own channel keeps HTTP/2 flow
// control windows small (no BDP probing, 64 KiB read-ahead), so that while
// it does not read, the server's write of the next 1 MiB chunk cannot
// complete: the stream stays open, mid-way.
class StalledResultReader {
 public:
  StalledResultReader(const std::string& address, const std::string& name)
      : stub_(v1::FusionService::NewStub(SmallWindowChannel(address))),
        thread_([this, stub = stub_.get(), name] {
          grpc::ClientContext context;
          auto reader = ReadPatchStream(stub, &context, name, 300);
          v1::ResultChunk chunk;
          if (reader->Read(&chunk)) {
            total_ = chunk.total_size();
            received_ += chunk.data().size();
          }
          first_.store(true);
          while (!resume_.load()) {
            std::this_thread::sleep_for(std::chrono::milliseconds(10));
          }
          while (reader->Read(&chunk)) {
            received_ += chunk.data().size();
            last_had_sha_ = !chunk.sha256().empty();
          }
          status_ = reader->Finish();
        }) {}
  ~StalledResultReader() { Join(); }

  static std::shared_ptr<grpc::Channel> SmallWindowChannel(
      const std::string& address) {
    grpc::ChannelArguments args;
    args.SetInt(GRPC_ARG_HTTP2_BDP_PROBE, 0);
    args.SetInt(GRPC_ARG_HTTP2_STREAM_LOOKAHEAD_BYTES, 64 << 10);
    return grpc::CreateCustomChannel(address,
                                     grpc::InsecureChannelCredentials(), args);
  }

  // Waits (up to 120 s) for the first chunk.
  bool WaitFirst() {
    for (int i = 0; i < 12000 && !first_.load(); ++i) {
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    return first_.load();
  }
  void Resume() { resume_.store(true); }
  void Join() {
    Resume();
    if (thread_.joinable()) thread_.join();
  }
  // After Join().
  const grpc::Status& status() const { return status_; }
  uint64_t received() const { return received_; }
  uint64_t total() const { return total_; }
  bool last_had_sha() const { return last_had_sha_; }

 private:
  std::atomic<bool> first_{false}, resume_{false};
  uint64_t received_ = 0, total_ = 0;
  bool last_had_sha_ = false;
  grpc::Status status_;
  std::unique_ptr<v1::FusionService::Stub> stub_;
  std::thread thread_;  // last: starts once the members above exist
};

TEST_F(TailordDrainTest, DrainEndsResultStreamsWithUnavailable) {
  auto server = Start({"--drain-timeout", "29"});
  ASSERT_TRUE(server->ok());
  const std::string name = BigPatchJob();
  StalledResultReader reader(server->address(), name);
  ASSERT_TRUE(reader.WaitFirst());
  ASSERT_GT(reader.total(), 2u << 20)
      << "the patch should take 3 chunks or more";
  ASSERT_TRUE(server->Signal(SIGTERM));
  // The service ends its streams once the (no) jobs have stopped; only then
  // does the reader take the chunks gRPC holds for it.
  EXPECT_TRUE(LogSoonHas(*server, kStreamsEnding)) << server->Log();
  reader.Join();
  EXPECT_EQ(reader.status().error_code(), grpc::StatusCode::UNAVAILABLE)
      << reader.status().error_message();
  EXPECT_TRUE(absl::StrContains(reader.status().error_message(),
                                "server is shutting down"))
      << reader.status().error_message();
  EXPECT_LT(reader.received(), reader.total());
  EXPECT_FALSE(reader.last_had_sha());
  EXPECT_EQ(server->Wait(), 0) << server->Log();
  // A stream opened during the drain would have ended the same way; after
  // it, the result is whole again.
  auto again = Start();
  ASSERT_TRUE(again->ok());
  StalledResultReader whole(again->address(), name);
  whole.Join();
  EXPECT_TRUE(whole.status().ok()) << whole.status().error_message();
  EXPECT_EQ(whole.received(), whole.total());
  EXPECT_TRUE(whole.last_had_sha());
}

TEST_F(TailordDrainTest, DrainEndsWatchesWithUnavailableNamingTheShutdown) {
  auto server = Start({"--drain-timeout", "29"});
  ASSERT_TRUE(server->ok());
  v1::FusionJob job;
  ASSERT_TRUE(Create(SlowSpec("watched"), &job).ok());
  WaitUntil(job.name(), [](const v1::FusionJob& j) {
    return j.progress().tensors_done() >= 1;
  });
  std::atomic<int> received{0};
  grpc::Status status;
  std::thread watcher([&] {
    grpc::ClientContext context;
    v1::WatchFusionJobRequest request;
    request.set_name(job.name());
    auto reader = stub_->WatchFusionJob(&context, request);
    v1::JobEvent e;
    while (reader->Read(&e)) ++received;
    status = reader->Finish();
  });
  for (int i = 0; i < 12000 && received.load() == 0; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  EXPECT_GT(received.load(), 0);
  EXPECT_EQ(server->Stop(SIGTERM), 0) << server->Log();
  watcher.join();
  EXPECT_EQ(status.error_code(), grpc::StatusCode::UNAVAILABLE)
      << status.error_message();
  EXPECT_TRUE(
      absl::StrContains(status.error_message(), "server is shutting down"))
      << status.error_message();
}

TEST_F(TailordDrainTest, SecondSignalExitsAtOnceAndTheJobResumesAfterRestart) {
  std::string name;
  {
    auto server = Start({"--drain-timeout", "29"});
    ASSERT_TRUE(server->ok());
    // A result stream whose reader stalls holds the drain open (up to its
    // 29 s deadline): the second signal lands during the drain.
    const std::string big = BigPatchJob();
    StalledResultReader stalled(server->address(), big);
    ASSERT_TRUE(stalled.WaitFirst());
    v1::FusionJob job;
    ASSERT_TRUE(Create(SlowSpec("twice"), &job).ok());
    name = job.name();
    WaitUntil(name, [](const v1::FusionJob& j) {
      return j.progress().tensors_done() >= 1;
    });
    const auto t0 = std::chrono::steady_clock::now();
    ASSERT_TRUE(server->Signal(SIGTERM));
    ASSERT_TRUE(LogSoonHas(*server, "draining (deadline")) << server->Log();
    ASSERT_TRUE(server->Signal(SIGTERM));
    const int code = server->Wait();
    const double seconds =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - t0)
            .count();
    std::cout << "second signal: exit " << code << " " << seconds
              << " s after the first\n";
    EXPECT_EQ(code, 3) << server->Log();
    // Well before the drain's 29 s deadline that the stalled stream holds.
    EXPECT_LT(seconds, 20.0);
    EXPECT_TRUE(absl::StrContains(
        server->Log(),
        "second signal: exiting without waiting for running jobs"))
        << server->Log();
    stalled.Join();  // the stream broke with the process
    EXPECT_FALSE(stalled.status().ok());
  }
  auto server = Start();
  ASSERT_TRUE(server->ok());
  const v1::FusionJob done = WaitDone(name);
  ASSERT_EQ(done.state(), v1::SUCCEEDED) << done.error_message();
  grpc::Status status;
  const std::vector<v1::JobEvent> all = Watch(name, 0, &status);
  ASSERT_TRUE(status.ok()) << status.error_message();
  ExpectGapFree(all, 1);
  const std::vector<RunTally> runs = TallyRuns(all);
  ASSERT_EQ(runs.size(), 2u);
  // The second run continued from the journal of the first.
  EXPECT_GE(runs[1].resumed, 1);
  EXPECT_TRUE(GoneSoon(JournalDir(name)));
}

}  // namespace
}  // namespace tailor
