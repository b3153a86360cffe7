#include "metrics/process_metrics.h"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <ctime>
#include <string>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_split.h"
#include "metrics/registry.h"

namespace tailor::metrics {
namespace {

// The value of the label-less sample `name` in `text`; NaN if absent.
double Sample(const std::string& text, const std::string& name) {
  for (absl::string_view line : absl::StrSplit(text, '\n')) {
    if (absl::ConsumePrefix(&line, name + " ")) {
      double v;
      if (absl::SimpleAtod(line, &v)) return v;
    }
  }
  return std::nan("");
}

TEST(ParseProcStatTest, CountsFieldsAfterTheLastParenthesis) {
  // A command name with spaces and a ') ' inside, as a process may choose.
  const std::string line =
      "4242 (tai lor) (x) S 1 4242 4242 0 -1 4194560 1000 0 0 0 "
      "250 75 0 0 20 0 9 0 123456 1901318144 43178 18446744073709551615 1 1 "
      "0 0 0 0 0 4096 17 3 0 0 0 0 0\n";
  std::optional<ProcStat> s = ParseProcStat(line);
  ASSERT_TRUE(s.has_value());
  EXPECT_EQ(s->utime_ticks, 250u);
  EXPECT_EQ(s->stime_ticks, 75u);
  EXPECT_EQ(s->start_ticks, 123456u);
  EXPECT_EQ(s->vsize_bytes, 1901318144u);
  EXPECT_EQ(s->rss_pages, 43178);
}

TEST(ParseProcStatTest, RefusesTruncatedOrGarbledLines) {
  EXPECT_FALSE(ParseProcStat("").has_value());
  EXPECT_FALSE(ParseProcStat("4242 (no close paren S 1 2 3").has_value());
  EXPECT_FALSE(ParseProcStat("4242 (short) S 1 2 3 4 5").has_value());
  EXPECT_FALSE(ParseProcStat("4242 (x) S 1 4242 4242 0 -1 4194560 1000 0 0 0 "
                             "utime 75 0 0 20 0 9 0 123456 1 2")
                   .has_value());
}

TEST(ParseBootTimeTest, FindsBtime) {
  EXPECT_EQ(ParseBootTime("cpu  1 2 3\nintr 5\nbtime 1700000000\nprocs 3\n"),
            1700000000);
  EXPECT_FALSE(ParseBootTime("cpu 1 2 3\n").has_value());
  EXPECT_FALSE(ParseBootTime("btime soon\n").has_value());
}

TEST(ProcessMetricsTest, ExportsThisProcessAndFollowsIt) {
  Registry r;
  AddProcessMetrics(&r);
  const std::string before = r.Render();
  for (const char* family :
       {"process_cpu_seconds_total", "process_resident_memory_bytes",
        "process_virtual_memory_bytes", "process_start_time_seconds",
        "process_open_fds", "process_max_fds"}) {
    EXPECT_NE(before.find(std::string("# TYPE ") + family), std::string::npos)
        << family;
    EXPECT_FALSE(std::isnan(Sample(before, family))) << family << "\n"
                                                     << before;
  }
  const double now = static_cast<double>(std::time(nullptr));
  // Started before now, and not before this test binary could have (a
  // loaded machine: generous).
  EXPECT_LE(Sample(before, "process_start_time_seconds"), now + 1);
  EXPECT_GT(Sample(before, "process_start_time_seconds"), now - 3600);
  EXPECT_GT(Sample(before, "process_resident_memory_bytes"), 1 << 20);
  EXPECT_GE(Sample(before, "process_virtual_memory_bytes"),
            Sample(before, "process_resident_memory_bytes"));
  EXPECT_GE(Sample(before, "process_open_fds"), 3);  // stdin, out, err
  EXPECT_GE(Sample(before, "process_max_fds"),
            Sample(before, "process_open_fds"));

  // Ten more descriptors are seen; CPU time does not go backwards.
  std::vector<int> fds;
  for (int i = 0; i < 10; ++i) fds.push_back(::open("/dev/null", O_RDONLY));
  volatile double spin = 0;
  const std::clock_t until = std::clock() + CLOCKS_PER_SEC / 20;
  while (std::clock() < until) spin = spin + 1;
  const std::string after = r.Render();
  for (int fd : fds) ::close(fd);
  EXPECT_EQ(Sample(after, "process_open_fds"),
            Sample(before, "process_open_fds") + 10);
  EXPECT_GT(Sample(after, "process_cpu_seconds_total"),
            Sample(before, "process_cpu_seconds_total"));
  EXPECT_EQ(Sample(after, "process_start_time_seconds"),
            Sample(before, "process_start_time_seconds"));
}

}  // namespace
}  // namespace tailor::metrics
