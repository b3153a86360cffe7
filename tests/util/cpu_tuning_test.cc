// Item 6 of issue #11: one compute pool per process, sized once from
// --threads or the cgroup's CPU quota.

#include "util/cpu_tuning.h"

#include <ATen/Parallel.h>
#include <gtest/gtest.h>
#include <sched.h>

#include <filesystem>
#include <fstream>

#include "testing/temp_dir.h"

namespace tailor {
namespace {

int Affinity() {
  cpu_set_t set;
  CPU_ZERO(&set);
  EXPECT_EQ(sched_getaffinity(0, sizeof(set), &set), 0);
  return CPU_COUNT(&set);
}

void Write(const std::string& path, const std::string& text) {
  std::filesystem::create_directories(
      std::filesystem::path(path).parent_path());
  std::ofstream(path) << text << "\n";
}

TEST(CpuTuningTest, CgroupV2QuotaRoundsUpAndIsCappedByAffinity) {
  testing::TempDir dir;
  Write(dir.Join("cpu.max"), "50000 100000");  // half a CPU
  EXPECT_EQ(AvailableCpus(dir.path()), 1);
  Write(dir.Join("cpu.max"), "100000 100000");
  EXPECT_EQ(AvailableCpus(dir.path()), 1);
  Write(dir.Join("cpu.max"), "150000 100000");  // 1.5 -> 2, or fewer CPUs
  EXPECT_EQ(AvailableCpus(dir.path()), std::min(2, Affinity()));
  Write(dir.Join("cpu.max"), "max 100000");  // no quota
  EXPECT_EQ(AvailableCpus(dir.path()), Affinity());
  Write(dir.Join("cpu.max"), "garbage");
  EXPECT_EQ(AvailableCpus(dir.path()), Affinity());
}

TEST(CpuTuningTest, CgroupV1QuotaAndNoCgroup) {
  testing::TempDir dir;
  Write(dir.Join("cpu/cpu.cfs_quota_us"), "100000");
  Write(dir.Join("cpu/cpu.cfs_period_us"), "100000");
  EXPECT_EQ(AvailableCpus(dir.path()), 1);
  Write(dir.Join("cpu/cpu.cfs_quota_us"), "-1");
  EXPECT_EQ(AvailableCpus(dir.path()), Affinity());
  testing::TempDir empty;
  EXPECT_EQ(AvailableCpus(empty.Join("nothing-here")), Affinity());
}

TEST(CpuTuningTest, OnePoolDoesTheParallelWork) {
  ComputeThreads t = ConfigureComputeThreads(2);
  // Debian's LibTorch runs on OpenBLAS, whose pool takes the threads;
  // LibTorch's intra-op pool is left at one thread (no second spinning pool).
  ASSERT_TRUE(t.blas_sized) << "the test expects OpenBLAS under LibTorch";
  EXPECT_EQ(t.blas, 2);
  EXPECT_EQ(t.aten, 1);
  EXPECT_EQ(at::get_num_threads(), 1);
  t = ConfigureComputeThreads(0);  // the quota / affinity
  EXPECT_EQ(t.blas, AvailableCpus());
  EXPECT_EQ(at::get_num_threads(), 1);
  ConfigureComputeThreads(1);
}

// Issue #12: worker slots split the threads; each worker's BLAS calls use
// its share (1 thread: OpenBLAS runs in the caller, no shared pool).
TEST(CpuTuningTest, WorkersSplitTheThreads) {
  ComputeThreads t = ConfigureComputeThreads(4, 2);
  EXPECT_EQ(t.workers, 2);
  EXPECT_EQ(t.blas, 2);
  EXPECT_EQ(t.aten, 1);
  t = ConfigureComputeThreads(2, 0);  // automatic: one worker per thread
  EXPECT_EQ(t.workers, 2);
  EXPECT_EQ(t.blas, 1);
  t = ConfigureComputeThreads(2, 8);  // more workers than threads: 1 each
  EXPECT_EQ(t.workers, 8);
  EXPECT_EQ(t.blas, 1);
  t = ConfigureComputeThreads(0, 0);
  EXPECT_EQ(t.workers, AvailableCpus());
  EXPECT_EQ(t.blas, 1);
  EXPECT_EQ(at::get_num_threads(), 1);
  ConfigureComputeThreads(1);
}

}  // namespace
}  // namespace tailor
