// The device pool over fake devices with small budgets.

#include "jobs/device_pool.h"

#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <thread>

#include "absl/strings/match.h"

namespace tailor::jobs {
namespace {

std::unique_ptr<DevicePool> Pool(std::vector<int64_t> budgets,
                                 bool cuda = false) {
  std::vector<PoolDevice> devices;
  for (size_t i = 0; i < budgets.size(); ++i) {
    const std::string name = cuda && i > 0 ? "cuda:" + std::to_string(i - 1)
                                           : "d" + std::to_string(i);
    devices.push_back({name, cuda && i > 0 ? name : "cpu", name, budgets[i]});
  }
  return *DevicePool::Create(std::move(devices));
}

TEST(DevicePoolTest, LeasesNeverExceedABudgetUnderConcurrency) {
  std::unique_ptr<DevicePool> pool = Pool({100, 60});
  std::atomic<int64_t> in_use[2] = {0, 0};
  std::atomic<int64_t> high[2] = {0, 0};
  std::atomic<int> leases{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 8; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < 200; ++i) {
        const int64_t bytes = 10 + (t * 7 + i * 13) % 50;
        auto lease = pool->Reserve({0, 1}, "t", bytes);
        ASSERT_TRUE(lease.ok()) << lease.status();
        const int d = (*lease)->index();
        const int64_t now = in_use[d] += bytes;
        int64_t h = high[d].load();
        while (now > h && !high[d].compare_exchange_weak(h, now)) {
        }
        ++leases;
        std::this_thread::yield();
        in_use[d] -= bytes;
      }
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_EQ(leases.load(), 1600);
  EXPECT_LE(high[0].load(), 100);
  EXPECT_LE(high[1].load(), 60);
  EXPECT_GT(high[1].load(), 0);  // both devices were used
  EXPECT_EQ(pool->Reserved(0), 0);
  EXPECT_EQ(pool->Reserved(1), 0);
}

TEST(DevicePoolTest, PicksTheDeviceWithTheMostFreeBudget) {
  std::unique_ptr<DevicePool> pool = Pool({100, 100, 80});
  auto a = pool->Reserve({0, 1, 2}, "a", 30);
  ASSERT_TRUE(a.ok());
  EXPECT_EQ((*a)->index(), 0);  // tie 100/100: the lowest index
  auto b = pool->Reserve({0, 1, 2}, "b", 30);
  ASSERT_TRUE(b.ok());
  EXPECT_EQ((*b)->index(), 1);  // 70, 100, 80
  auto c = pool->Reserve({0, 1, 2}, "c", 10);
  ASSERT_TRUE(c.ok());
  EXPECT_EQ((*c)->index(), 2);  // 70, 70, 80
  EXPECT_EQ((*c)->name(), "d2");
  EXPECT_EQ((*c)->device(), "cpu");
  a->reset();
  EXPECT_EQ(pool->Reserved(0), 0);
  auto d = pool->Reserve({0, 1, 2}, "d", 10);
  ASSERT_TRUE(d.ok());
  EXPECT_EQ((*d)->index(), 0);
}

TEST(DevicePoolTest, PermittedFiltersByPreference) {
  std::unique_ptr<DevicePool> pool = Pool({100, 50, 50}, /*cuda=*/true);
  EXPECT_EQ(*pool->Permitted("auto"), (std::vector<int>{1, 2}));
  EXPECT_EQ(*pool->Permitted("cuda"), (std::vector<int>{1, 2}));
  EXPECT_EQ(*pool->Permitted("cuda:1"), (std::vector<int>{2}));
  EXPECT_EQ(*pool->Permitted("cpu"), (std::vector<int>{0}));
  EXPECT_EQ(pool->Permitted("cuda:7").status().code(),
            absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(pool->Permitted("tpu").status().code(),
            absl::StatusCode::kInvalidArgument);
  // Only the permitted device is used, even when another has more room.
  auto lease = pool->Reserve(*pool->Permitted("cuda:1"), "t", 40);
  ASSERT_TRUE(lease.ok());
  EXPECT_EQ((*lease)->device(), "cuda:1");

  std::unique_ptr<DevicePool> cpu_only = Pool({100});
  EXPECT_EQ(*cpu_only->Permitted("auto"), (std::vector<int>{0}));
  EXPECT_EQ(cpu_only->Permitted("cuda").status().code(),
            absl::StatusCode::kFailedPrecondition);
}

TEST(DevicePoolTest, OversizeFailsAtOnceNamingTensorAndBudgets) {
  std::unique_ptr<DevicePool> pool = Pool({100, 60});
  auto held = pool->Reserve({0}, "held", 100);  // full: must not wait
  auto lease = pool->Reserve({0, 1}, "layers.0.w", 101);
  ASSERT_EQ(lease.status().code(), absl::StatusCode::kResourceExhausted);
  const std::string m(lease.status().message());
  EXPECT_TRUE(absl::StrContains(m, "'layers.0.w'")) << m;
  EXPECT_TRUE(absl::StrContains(m, "101")) << m;
  EXPECT_TRUE(absl::StrContains(m, "d0: 100")) << m;
  EXPECT_TRUE(absl::StrContains(m, "d1: 60")) << m;
  // Larger than the permitted device's budget, though another would fit.
  EXPECT_EQ(pool->Reserve({1}, "t", 80).status().code(),
            absl::StatusCode::kResourceExhausted);
}

TEST(DevicePoolTest, ReleaseWakesAWaiter) {
  std::unique_ptr<DevicePool> pool = Pool({100});
  auto first = pool->Reserve({0}, "a", 70);
  ASSERT_TRUE(first.ok());
  std::atomic<bool> got{false};
  std::thread waiter([&] {
    auto second = pool->Reserve({0}, "b", 50, nullptr, absl::Seconds(60));
    EXPECT_TRUE(second.ok());
    got = true;
  });
  std::this_thread::sleep_for(std::chrono::milliseconds(50));
  EXPECT_FALSE(got.load());
  first->reset();
  waiter.join();  // woken by the release, not by the 60 s poll
  EXPECT_TRUE(got.load());
}

TEST(DevicePoolTest, CancelUnblocksAWaiter) {
  std::unique_ptr<DevicePool> pool = Pool({100});
  auto held = pool->Reserve({0}, "a", 100);
  std::atomic<bool> cancel{false};
  absl::Status status;
  std::thread waiter([&] {
    status =
        pool->Reserve({0}, "b", 1, &cancel, absl::Milliseconds(5)).status();
  });
  std::this_thread::sleep_for(std::chrono::milliseconds(30));
  cancel = true;
  waiter.join();
  EXPECT_EQ(status.code(), absl::StatusCode::kCancelled);
  EXPECT_TRUE(absl::StrContains(status.message(), "'b'"));
  EXPECT_EQ(pool->Reserved(0), 100);
}

TEST(DevicePoolTest, ParsesBudgets) {
  auto b = ParseDeviceBudget("cpu=2Gi");
  ASSERT_TRUE(b.ok());
  EXPECT_EQ(b->first, "cpu");
  EXPECT_EQ(b->second.For(0), int64_t{2} << 30);
  EXPECT_EQ(ParseDeviceBudget("cuda:1=500M")->second.bytes, 500000000);
  EXPECT_EQ(ParseDeviceBudget("cuda=4096")->second.bytes, 4096);
  EXPECT_EQ(ParseDeviceBudget("cpu=0.5")->second.For(1000), 500);
  for (const char* bad : {"cpu", "gpu=1G", "cpu=0", "cpu=1.5", "cpu=-3",
                          "cpu=12X", "cuda:x=1G", "cpu=0.0"}) {
    EXPECT_EQ(ParseDeviceBudget(bad).status().code(),
              absl::StatusCode::kInvalidArgument)
        << bad;
  }
  EXPECT_EQ(DevicePool::Create({{"a", "cpu", "cpu", 0}}).status().code(),
            absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace tailor::jobs
