// Issue #15 point 2: what a Kubernetes readiness probe sees. tailord's
// grpc.health.v1 service, `tailorctl health` (its exit status and output)
// and /readyz say SERVING while tailord can take work, NOT_SERVING while
// the data directory (job store, journals) cannot be written and during
// the drain after SIGTERM.

#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <stdio.h>

#include <atomic>
#include <chrono>
#include <iostream>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "grpc/health/v1/health.grpc.pb.h"
#include "tailord_fixture.h"

namespace tailor {
namespace {

namespace health = ::grpc::health::v1;

// grpc.health.v1 Check's answer ("SERVING", "NOT_SERVING", ...) or the
// call's error ("error 14: ...").
std::string Check(const std::string& address, const std::string& service) {
  auto stub = health::Health::NewStub(
      grpc::CreateChannel(address, grpc::InsecureChannelCredentials()));
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() +
                       std::chrono::seconds(30));
  health::HealthCheckRequest request;
  request.set_service(service);
  health::HealthCheckResponse response;
  grpc::Status s = stub->Check(&context, request, &response);
  if (!s.ok())
    return absl::StrCat("error ", s.error_code(), ": ", s.error_message());
  return health::HealthCheckResponse::ServingStatus_Name(response.status());
}

// Polls Check (up to 90 s of wall time: the data directory is probed every
// 5 s, and a loaded machine stretches that) until it answers `want`.
bool CheckSoonSays(const std::string& address, const std::string& want) {
  const auto deadline =
      std::chrono::steady_clock::now() + std::chrono::seconds(90);
  while (std::chrono::steady_clock::now() < deadline) {
    if (Check(address, "") == want) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  return false;
}

class TailordHealthTest : public TailordTest {
 protected:
  // `tailorctl health` against `server`: exit status and stdout.
  CliResult CtlHealth(const testing::TailordProcess& server,
                      const std::vector<std::string>& extra = {}) {
    std::vector<std::string> args = {"health", "--server", server.address()};
    args.insert(args.end(), extra.begin(), extra.end());
    return Tailorctl(args);
  }
};

TEST_F(TailordHealthTest, NotServingWhileTheDataDirectoryCannotBeWritten) {
  auto server = Start();
  ASSERT_TRUE(server->ok());
  EXPECT_EQ(Check(server->address(), ""), "SERVING");
  EXPECT_EQ(Check(server->address(), "tailor.v1.FusionService"), "SERVING");
  CliResult ok = CtlHealth(*server);
  EXPECT_EQ(ok.code, 0) << ok.out << ok.err;
  EXPECT_EQ(ok.out, "SERVING\n");
  EXPECT_EQ(HttpGet(server->metrics_port(), "/readyz").status, 200);

  // The data volume goes away under tailord (unmounted, or here renamed:
  // the test runs as root, whom permissions would not stop).
  const std::string data = tmp_.Join("data"), moved = tmp_.Join("data.gone");
  ASSERT_EQ(::rename(data.c_str(), moved.c_str()), 0);
  ASSERT_TRUE(CheckSoonSays(server->address(), "NOT_SERVING")) << server->Log();
  EXPECT_EQ(Check(server->address(), "tailor.v1.FusionService"), "NOT_SERVING");
  CliResult down = CtlHealth(*server);
  EXPECT_EQ(down.code, 7) << down.out << down.err;  // kExitUnavailable
  EXPECT_EQ(down.out, "NOT_SERVING\n");
  CliResult json = CtlHealth(*server, {"-o", "json"});
  EXPECT_EQ(json.code, 7) << json.out << json.err;
  EXPECT_EQ(json.out, "{\"status\": \"NOT_SERVING\"}\n");
  EXPECT_EQ(HttpGet(server->metrics_port(), "/readyz").status, 503);
  // Liveness is another matter: tailord itself is fine.
  EXPECT_EQ(HttpGet(server->metrics_port(), "/healthz").status, 200);
  // The log says why, naming the directory.
  EXPECT_TRUE(absl::StrContains(server->Log(), data + "/.tailord-probe-"))
      << server->Log();
  EXPECT_TRUE(absl::StrContains(server->Log(), "NOT_SERVING")) << server->Log();

  // The volume is back: SERVING again, and jobs run.
  ASSERT_EQ(::rename(moved.c_str(), data.c_str()), 0);
  ASSERT_TRUE(CheckSoonSays(server->address(), "SERVING")) << server->Log();
  CliResult back = CtlHealth(*server);
  EXPECT_EQ(back.code, 0) << back.out << back.err;
  EXPECT_EQ(back.out, "SERVING\n");
  EXPECT_EQ(HttpGet(server->metrics_port(), "/readyz").status, 200);
  v1::FusionJob job;
  ASSERT_TRUE(Create(Spec("after"), &job).ok());
  EXPECT_EQ(WaitUntil(job.name(),
                      [](const v1::FusionJob& j) {
                        return j.state() == v1::SUCCEEDED ||
                               j.state() == v1::FAILED;
                      })
                .state(),
            v1::SUCCEEDED);
  EXPECT_EQ(server->Stop(SIGTERM), 0);
}

TEST_F(TailordHealthTest, NotServingDuringTheDrain) {
  // A job with one large tensor keeps the drain open: a running job stops
  // only at a tensor boundary, and exact float64 compensation of a 2048 x
  // 2048 weight takes many seconds even on an idle machine (on a slow one
  // it outlives the drain's deadline and tailord exits anyway, status 0).
  WriteCheckpoint("big-base", "big-ft", "big-h.safetensors", 1, 2048);
  auto server = Start({"--drain-timeout", "29"});
  ASSERT_TRUE(server->ok());
  v1::FusionJobSpec spec =
      Spec("big", "big-base", "big-ft", "big-h.safetensors");
  spec.set_compensation(v1::COMPENSATION_EXACT);
  spec.set_float64(true);
  v1::FusionJob job;
  ASSERT_TRUE(Create(spec, &job).ok());
  WaitUntil(job.name(),
            [](const v1::FusionJob& j) { return j.state() == v1::RUNNING; });

  // A Health.Watch stream sees SERVING, then NOT_SERVING on SIGTERM.
  auto channel = grpc::CreateChannel(server->address(),
                                     grpc::InsecureChannelCredentials());
  auto stub = health::Health::NewStub(channel);
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() +
                       std::chrono::seconds(180));
  health::HealthCheckRequest request;
  auto reader = stub->Watch(&context, request);
  health::HealthCheckResponse update;
  ASSERT_TRUE(reader->Read(&update));
  EXPECT_EQ(update.status(), health::HealthCheckResponse::SERVING);
  EXPECT_EQ(CtlHealth(*server).code, 0);

  const auto t0 = std::chrono::steady_clock::now();
  ASSERT_EQ(::kill(server->pid(), SIGTERM), 0);
  ASSERT_TRUE(reader->Read(&update)) << server->Log();
  EXPECT_EQ(update.status(), health::HealthCheckResponse::NOT_SERVING);
  // Still answering while the job stops: every probe says NOT_SERVING.
  EXPECT_EQ(Check(server->address(), ""), "NOT_SERVING");
  EXPECT_EQ(Check(server->address(), "tailor.v1.FusionService"), "NOT_SERVING");
  EXPECT_EQ(HttpGet(server->metrics_port(), "/readyz").status, 503);
  // The job had not finished its tensor when those were answered (else the
  // checks above may have raced the exit).
  EXPECT_EQ(Get(job.name()).state(), v1::RUNNING);
  const double probed_s =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - t0)
          .count();
  context.TryCancel();
  reader->Finish();
  // tailorctl (a process that loads LibTorch's libraries: seconds, and
  // tens of them on a starved machine) may come after the drain's end; a
  // probe fails either way: exit 7, NOT_SERVING while tailord answers.
  CliResult draining = CtlHealth(*server);
  EXPECT_EQ(draining.code, 7) << draining.out << draining.err;
  EXPECT_TRUE(draining.out == "NOT_SERVING\n" || draining.out.empty())
      << draining.out << draining.err;
  std::cout << "drain: probed NOT_SERVING " << probed_s
            << " s after SIGTERM; tailorctl health then said "
            << (draining.out.empty() ? std::string("unreachable\n")
                                     : draining.out);

  // Waits for the exit (signal 0: no second SIGTERM).
  EXPECT_EQ(server->Stop(0), 0) << server->Log();
}

}  // namespace
}  // namespace tailor
