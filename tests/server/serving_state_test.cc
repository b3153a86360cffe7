// ServingState (issue #15 point 2): SERVING from Start() until BeginDrain(),
// NOT_SERVING while the data directory cannot be written, back once it can.

#include "server/serving_state.h"

#include <gtest/gtest.h>
#include <stdio.h>
#include <sys/stat.h>

#include <chrono>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "absl/synchronization/mutex.h"
#include "testing/temp_dir.h"

namespace tailor::server {
namespace {

// What on_change reported, in order.
class Changes {
 public:
  void Add(bool serving) {
    absl::MutexLock lock(&mu_);
    seen_.push_back(serving);
  }
  std::vector<bool> seen() const {
    absl::MutexLock lock(&mu_);
    return seen_;
  }
  // Waits (up to 60 s of wall time: generous for a loaded machine) until
  // `n` changes were reported.
  bool WaitFor(size_t n) const {
    absl::MutexLock lock(&mu_);
    auto enough = [this, n]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
      return seen_.size() >= n;
    };
    return mu_.AwaitWithTimeout(absl::Condition(&enough), absl::Seconds(60));
  }

 private:
  mutable absl::Mutex mu_;
  std::vector<bool> seen_ ABSL_GUARDED_BY(mu_);
};

TEST(ProbeWritableDirectoryTest, PassesOnADirectoryAndLeavesNothing) {
  testing::TempDir tmp;
  EXPECT_TRUE(ProbeWritableDirectory(tmp.path()).ok());
  struct stat st;
  const std::string probe =
      tmp.Join(std::string(".tailord-probe-") + std::to_string(::getpid()));
  EXPECT_NE(::stat(probe.c_str(), &st), 0) << "the probe file was left";
}

TEST(ProbeWritableDirectoryTest, FailsNamingTheFileWhenTheDirectoryIsGone) {
  testing::TempDir tmp;
  const std::string gone = tmp.Join("gone");
  absl::Status s = ProbeWritableDirectory(gone);
  EXPECT_EQ(s.code(), absl::StatusCode::kNotFound) << s;
  EXPECT_TRUE(absl::StrContains(s.message(), gone + "/.tailord-probe-")) << s;
  EXPECT_TRUE(absl::StrContains(s.message(), "data directory")) << s;
  EXPECT_LT(s.message().size(), 4096u);
}

TEST(ServingStateTest,
     NotServingWhileTheDataDirectoryIsGoneAndForGoodAfterDrain) {
  testing::TempDir tmp;
  const std::string data = tmp.Join("data"), moved = tmp.Join("moved");
  ASSERT_EQ(::mkdir(data.c_str(), 0700), 0);
  Changes changes;
  ServingState::Options options;
  options.data_dir = data;
  options.probe_interval = absl::Milliseconds(20);
  options.on_change = [&changes](bool serving) { changes.Add(serving); };
  ServingState state(std::move(options));
  EXPECT_FALSE(state.serving());
  EXPECT_EQ(state.reason(), "not started");
  state.Start();
  ASSERT_TRUE(changes.WaitFor(1));
  EXPECT_TRUE(state.serving());
  EXPECT_EQ(state.reason(), "");

  // The volume goes away (unmounted, renamed): NOT_SERVING, with the
  // probe's error as the reason.
  ASSERT_EQ(::rename(data.c_str(), moved.c_str()), 0);
  ASSERT_TRUE(changes.WaitFor(2));
  EXPECT_FALSE(state.serving());
  EXPECT_TRUE(absl::StrContains(state.reason(), data)) << state.reason();
  // Back: SERVING again.
  ASSERT_EQ(::rename(moved.c_str(), data.c_str()), 0);
  ASSERT_TRUE(changes.WaitFor(3));
  EXPECT_TRUE(state.serving());

  state.BeginDrain();
  EXPECT_FALSE(state.serving());
  EXPECT_EQ(state.reason(), "draining");
  // Probing stopped: the directory coming and going changes nothing.
  ASSERT_EQ(::rename(data.c_str(), moved.c_str()), 0);
  std::this_thread::sleep_for(std::chrono::milliseconds(200));
  ASSERT_EQ(::rename(moved.c_str(), data.c_str()), 0);
  std::this_thread::sleep_for(std::chrono::milliseconds(200));
  EXPECT_FALSE(state.serving());
  EXPECT_EQ(changes.seen(), (std::vector<bool>{true, false, true, false}));
}

TEST(ServingStateTest, AnUnusableDirectoryAtStartIsReportedAsNotServing) {
  testing::TempDir tmp;
  Changes changes;
  ServingState::Options options;
  options.data_dir = tmp.Join("never");
  options.probe_interval = absl::Milliseconds(20);
  options.on_change = [&changes](bool serving) { changes.Add(serving); };
  ServingState state(std::move(options));
  state.Start();
  ASSERT_TRUE(changes.WaitFor(1));
  EXPECT_EQ(changes.seen(), std::vector<bool>{false});
  EXPECT_FALSE(state.serving());
  ASSERT_EQ(::mkdir(tmp.Join("never").c_str(), 0700), 0);
  ASSERT_TRUE(changes.WaitFor(2));
  EXPECT_TRUE(state.serving());
}

}  // namespace
}  // namespace tailor::server
