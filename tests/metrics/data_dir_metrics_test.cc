#include "metrics/data_dir_metrics.h"

#include <gtest/gtest.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include <cmath>
#include <fstream>
#include <string>

#include "absl/strings/numbers.h"
#include "absl/strings/str_split.h"
#include "metrics/registry.h"
#include "testing/temp_dir.h"

namespace tailor::metrics {
namespace {

double Sample(const std::string& text, const std::string& name) {
  for (absl::string_view line : absl::StrSplit(text, '\n')) {
    if (absl::ConsumePrefix(&line, name + " ")) {
      double v;
      if (absl::SimpleAtod(line, &v)) return v;
    }
  }
  return std::nan("");
}

void WriteBytes(const std::string& path, size_t n) {
  std::ofstream out(path, std::ios::binary);
  out << std::string(n, 'x');
  ASSERT_TRUE(out.good()) << path;
}

TEST(DiskUsageBytesTest, CountsFilesBelowButNotThroughLinks) {
  testing::TempDir tmp;
  ASSERT_EQ(::mkdir(tmp.Join("a").c_str(), 0755), 0);
  ASSERT_EQ(::mkdir(tmp.Join("a/b").c_str(), 0755), 0);
  const int64_t empty = DiskUsageBytes(tmp.path(), 1000);
  ASSERT_GE(empty, 0);
  WriteBytes(tmp.Join("a/b/one"), 1 << 20);
  WriteBytes(tmp.Join("a/two"), 1 << 19);
  const int64_t full = DiskUsageBytes(tmp.path(), 1000);
  EXPECT_GE(full - empty, (1 << 20) + (1 << 19));
  EXPECT_LT(full - empty, (1 << 20) + (1 << 19) + (1 << 18));

  // A link to a big directory elsewhere adds only the link itself.
  testing::TempDir other;
  WriteBytes(other.Join("big"), 4 << 20);
  ASSERT_EQ(::symlink(other.path().c_str(), tmp.Join("a/link").c_str()), 0);
  EXPECT_LT(DiskUsageBytes(tmp.path(), 1000), full + (1 << 16));

  // The entry bound stops the walk (a lower bound).
  EXPECT_LT(DiskUsageBytes(tmp.path(), 1), full);
  EXPECT_EQ(DiskUsageBytes(tmp.Join("missing"), 1000), -1);
  EXPECT_EQ(DiskUsageBytes(tmp.Join("a/two"), 1000), -1);  // not a directory
}

TEST(DataDirMetricsTest, ExportsTheVolumeAndUsageAndCachesTheWalk) {
  testing::TempDir tmp;
  const std::string data = tmp.Join("data");
  ASSERT_EQ(::mkdir(data.c_str(), 0755), 0);
  Registry r;
  DataDirMetricsOptions o;
  o.data_dir = data;
  o.journal_dir = data + "/journal";
  o.journal_reserve_bytes = 1 << 20;
  o.walk_interval = absl::Hours(1);  // only the first scrape walks
  AddDataDirMetrics(&r, o);

  const std::string first = r.Render();
  EXPECT_EQ(Sample(first, "tailor_journal_used_bytes"), 0)
      << "no journal directory yet: nothing used\n"
      << first;
  const double used = Sample(first, "tailor_data_dir_used_bytes");
  EXPECT_GE(used, 0);
  struct statvfs vfs;
  ASSERT_EQ(::statvfs(data.c_str(), &vfs), 0);
  const double size = Sample(first, "tailor_data_volume_size_bytes");
  const double free = Sample(first, "tailor_data_volume_free_bytes");
  EXPECT_EQ(size, static_cast<double>(vfs.f_blocks) * vfs.f_frsize);
  EXPECT_GT(free, 0);
  EXPECT_LE(free, size);
  // Other writers share the volume: compare within the same scrape.
  EXPECT_EQ(Sample(first, "tailor_journal_free_bytes"),
            std::max(0.0, free - (1 << 20)));

  // Within the interval the walk is not redone; statvfs is.
  ASSERT_EQ(::mkdir(o.journal_dir.c_str(), 0755), 0);
  WriteBytes(o.journal_dir + "/j", 1 << 20);
  const std::string cached = r.Render();
  EXPECT_EQ(Sample(cached, "tailor_data_dir_used_bytes"), used);
  EXPECT_EQ(Sample(cached, "tailor_journal_used_bytes"), 0);

  Registry fresh;
  o.walk_interval = absl::ZeroDuration();
  AddDataDirMetrics(&fresh, o);
  const std::string now = fresh.Render();
  EXPECT_GE(Sample(now, "tailor_journal_used_bytes"), 1 << 20);
  EXPECT_GE(Sample(now, "tailor_data_dir_used_bytes"), used + (1 << 20));
}

}  // namespace
}  // namespace tailor::metrics
