#include "metrics/registry.h"

#include <gtest/gtest.h>

#include <cmath>
#include <limits>

namespace tailor::metrics {
namespace {

TEST(FormatValueTest, ShortestRoundTripAndSpecials) {
  EXPECT_EQ(FormatValue(0), "0");
  EXPECT_EQ(FormatValue(3), "3");
  EXPECT_EQ(FormatValue(0.1), "0.1");
  EXPECT_EQ(FormatValue(-2.5e-7), "-2.5e-07");
  EXPECT_EQ(FormatValue(1.0 / 3), "0.3333333333333333");
  EXPECT_EQ(FormatValue(0.1 + 0.2), "0.30000000000000004");
  EXPECT_EQ(FormatValue(std::numeric_limits<double>::infinity()), "+Inf");
  EXPECT_EQ(FormatValue(-std::numeric_limits<double>::infinity()), "-Inf");
  EXPECT_EQ(FormatValue(std::nan("")), "NaN");
}

TEST(EscapeTest, LabelValuesAndHelp) {
  EXPECT_EQ(EscapeLabelValue("a\\b\"c\nd"), "a\\\\b\\\"c\\nd");
  EXPECT_EQ(EscapeHelp("a\\b\"c\nd"), "a\\\\b\"c\\nd");
}

TEST(RegistryTest, RendersCountersAndGaugesWithLabels) {
  Registry r;
  Family* c = r.AddCounter("t_requests_total", "Requests.\nSecond line.",
                           {"method", "code"});
  Family* g = r.AddGauge("t_temperature_celsius", "Temp.");
  c->Increment({"Get", "OK"});
  c->Increment({"Get", "OK"}, 2);
  c->Increment({"Put", "say \"hi\""});
  c->Increment({"Put", "OK"}, -5);   // counters never go down
  c->Increment({"only-one-label"});  // wrong arity: ignored
  g->Set({}, 21.5);
  EXPECT_EQ(r.Render(),
            "# HELP t_requests_total Requests.\\nSecond line.\n"
            "# TYPE t_requests_total counter\n"
            "t_requests_total{method=\"Get\",code=\"OK\"} 3\n"
            "t_requests_total{method=\"Put\",code=\"say \\\"hi\\\"\"} 1\n"
            "# HELP t_temperature_celsius Temp.\n"
            "# TYPE t_temperature_celsius gauge\n"
            "t_temperature_celsius 21.5\n");
}

TEST(RegistryTest, HistogramBucketsAreCumulative) {
  Registry r;
  Family* h =
      r.AddHistogram("t_latency_seconds", "Latency.", {"device"}, {0.1, 1, 10});
  for (double v : {0.05, 0.1, 0.5, 5.0, 50.0}) h->Observe({"cpu"}, v);
  EXPECT_EQ(r.Render(),
            "# HELP t_latency_seconds Latency.\n"
            "# TYPE t_latency_seconds histogram\n"
            "t_latency_seconds_bucket{device=\"cpu\",le=\"0.1\"} 2\n"
            "t_latency_seconds_bucket{device=\"cpu\",le=\"1\"} 3\n"
            "t_latency_seconds_bucket{device=\"cpu\",le=\"10\"} 4\n"
            "t_latency_seconds_bucket{device=\"cpu\",le=\"+Inf\"} 5\n"
            "t_latency_seconds_sum{device=\"cpu\"} 55.65\n"
            "t_latency_seconds_count{device=\"cpu\"} 5\n");
}

TEST(RegistryTest, CollectorsRunBeforeRender) {
  Registry r;
  Family* g = r.AddGauge("t_jobs", "Jobs.", {"state"});
  int calls = 0;
  const int64_t id = r.AddCollector([&] { g->Set({"queued"}, ++calls); });
  EXPECT_NE(r.Render().find("t_jobs{state=\"queued\"} 1\n"), std::string::npos);
  EXPECT_NE(r.Render().find("t_jobs{state=\"queued\"} 2\n"), std::string::npos);
  r.RemoveCollector(id);
  g->Clear();
  EXPECT_EQ(r.Render(), "# HELP t_jobs Jobs.\n# TYPE t_jobs gauge\n");
  EXPECT_EQ(calls, 2);
}

TEST(RegistryTest, InitExportsSeriesAtZeroWithoutChangingThem) {
  Registry r;
  Family* c = r.AddCounter("t_done_total", "Done.", {"outcome"});
  Family* h = r.AddHistogram("t_run_seconds", "Run.", {"outcome"}, {1});
  c->Init({"failed"});
  c->Init({"wrong", "arity"});  // ignored
  h->Init({"failed"});
  EXPECT_EQ(r.Render(),
            "# HELP t_done_total Done.\n"
            "# TYPE t_done_total counter\n"
            "t_done_total{outcome=\"failed\"} 0\n"
            "# HELP t_run_seconds Run.\n"
            "# TYPE t_run_seconds histogram\n"
            "t_run_seconds_bucket{outcome=\"failed\",le=\"1\"} 0\n"
            "t_run_seconds_bucket{outcome=\"failed\",le=\"+Inf\"} 0\n"
            "t_run_seconds_sum{outcome=\"failed\"} 0\n"
            "t_run_seconds_count{outcome=\"failed\"} 0\n");
  c->Increment({"failed"}, 2);
  c->Init({"failed"});  // an existing series keeps its value
  EXPECT_NE(r.Render().find("t_done_total{outcome=\"failed\"} 2\n"),
            std::string::npos);
}

TEST(RegistryTest, SetOnACounterMirrorsATotalAndNeverLowersIt) {
  Registry r;
  Family* c = r.AddCounter("t_cpu_seconds_total", "CPU.");
  c->Set({}, 1.5);
  c->Set({}, 1.0);  // a counter never goes down
  EXPECT_NE(r.Render().find("t_cpu_seconds_total 1.5\n"), std::string::npos);
  c->Set({}, 2.25);
  EXPECT_NE(r.Render().find("t_cpu_seconds_total 2.25\n"), std::string::npos);
}

TEST(RegistryDeathTest, InvalidNamesAreProgrammingErrors) {
  Registry r;
  EXPECT_DEATH(r.AddCounter("1bad", "x"), "invalid metric name");
  EXPECT_DEATH(r.AddHistogram("t_h", "x", {"le"}, {1}), "invalid label name");
  EXPECT_DEATH(r.AddHistogram("t_h2", "x", {}, {2, 1}), "ascending");
  r.AddGauge("t_g", "x");
  EXPECT_DEATH(r.AddGauge("t_g", "x"), "registered twice");
}

}  // namespace
}  // namespace tailor::metrics
