#include "server/server_config.h"

#include <gtest/gtest.h>

#include <fstream>

#include "absl/strings/match.h"
#include "testing/temp_dir.h"

namespace tailor::server {
namespace {

using ::tailor::testing::TempDir;

std::string Write(const TempDir& dir, const std::string& text) {
  const std::string path = dir.Join("tailord.yaml");
  std::ofstream(path) << text;
  return path;
}

absl::StatusOr<ServerConfig> Parse(std::vector<std::string> args) {
  CLI::App app;
  ServerFlags flags;
  flags.Add(app);
  std::vector<const char*> argv = {"tailord"};
  for (const std::string& a : args) argv.push_back(a.c_str());
  app.parse(static_cast<int>(argv.size()), argv.data());
  return flags.Resolve();
}

TEST(ServerConfigTest, EmbeddedDefaultsAreValid) {
  absl::StatusOr<ServerConfig> c = Parse({});
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->listen, "127.0.0.1:50051");
  EXPECT_EQ(c->metrics_listen, "127.0.0.1:9464");
  EXPECT_EQ(c->data_dir, "tailord-data");
  EXPECT_TRUE(c->allowed_roots.empty());
  EXPECT_LT(c->drain_timeout_seconds, 30);
}

TEST(ServerConfigTest, FileThenFlags) {
  TempDir dir;
  const std::string path =
      Write(dir,
            "listen: 0.0.0.0:7000\ninsecure: true\nmax_queued_jobs: 5\n"
            "allowed-root: [/data, /models]\ndrain-timeout: 12.5\n");
  absl::StatusOr<ServerConfig> c =
      Parse({"--config", path, "--max-queued-jobs", "9"});
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->listen, "0.0.0.0:7000");
  EXPECT_EQ(c->max_queued_jobs, 9);  // the flag wins
  EXPECT_EQ(c->allowed_roots, (std::vector<std::string>{"/data", "/models"}));
  EXPECT_EQ(c->drain_timeout_seconds, 12.5);
}

// Every setting is read from the file into its own field, and every flag
// overrides the file's value for its own setting (server_config.cc's one
// table of settings): the file gives each setting a value other than its
// default, the command line another; the file's values land, and the
// flags' win, field by field.
TEST(ServerConfigTest, EverySettingIsReadFromTheFileAndEveryFlagOverridesIt) {
  TempDir dir;
  // The booleans of `file` are the defaults' opposite; of `path`, what the
  // flags then change.
  const std::string file = Write(
      dir,
      "listen: 127.0.0.1:1\nmetrics-listen: 127.0.0.1:2\ndata-dir: /f/data\n"
      "allowed-root: [/f/root]\nmax-concurrent-jobs: 2\nthreads: 2\n"
      "cpu-workers: 2\nmax-queued-jobs: 2\nmax-spec-bytes: 2048\n"
      "drain-timeout: 2\njournal-max-bytes: 2\njournal-reserve-bytes: 2\n"
      "max-interrupted-runs: 2\nmax-result-streams: 2\njob-retention: 2h\n"
      "keepalive-time: 2\nkeepalive-timeout: 2\nready-file: /f/ready\n"
      "tls-cert: /f/cert\ntls-key: /f/key\ntls-client-ca: /f/ca\n"
      "auth-token-file: /f/tokens\nadmin-principal: [f-admin]\n"
      "metrics-token-file: /f/metrics\nauth-reload-interval: 2\n"
      "max-queued-jobs-per-principal: 2\ninsecure: true\nreflection: false\n"
      "log-level: debug\ndevice-memory-budget: [cpu=2G]\n");
  absl::StatusOr<ServerConfig> f = Parse({"--config", file});
  ASSERT_TRUE(f.ok()) << f.status();
  EXPECT_EQ(f->listen, "127.0.0.1:1");
  EXPECT_EQ(f->metrics_listen, "127.0.0.1:2");
  EXPECT_EQ(f->data_dir, "/f/data");
  EXPECT_EQ(f->allowed_roots, std::vector<std::string>{"/f/root"});
  EXPECT_EQ(f->max_concurrent_jobs, 2);
  EXPECT_EQ(f->threads, 2);
  EXPECT_EQ(f->cpu_workers, 2);
  EXPECT_EQ(f->max_queued_jobs, 2);
  EXPECT_EQ(f->max_spec_bytes, 2048);
  EXPECT_EQ(f->drain_timeout_seconds, 2);
  EXPECT_EQ(f->journal_max_bytes, 2);
  EXPECT_EQ(f->journal_reserve_bytes, 2);
  EXPECT_EQ(f->max_interrupted_runs, 2);
  EXPECT_EQ(f->max_result_streams, 2);
  EXPECT_EQ(f->job_retention, "2h");
  EXPECT_EQ(f->keepalive_time_seconds, 2);
  EXPECT_EQ(f->keepalive_timeout_seconds, 2);
  EXPECT_EQ(f->ready_file, "/f/ready");
  EXPECT_EQ(f->tls_cert, "/f/cert");
  EXPECT_EQ(f->tls_key, "/f/key");
  EXPECT_EQ(f->tls_client_ca, "/f/ca");
  EXPECT_EQ(f->auth_token_file, "/f/tokens");
  EXPECT_EQ(f->admin_principals, std::vector<std::string>{"f-admin"});
  EXPECT_EQ(f->metrics_token_file, "/f/metrics");
  EXPECT_EQ(f->auth_reload_seconds, 2);
  EXPECT_EQ(f->max_queued_jobs_per_principal, 2);
  EXPECT_TRUE(f->insecure);
  EXPECT_FALSE(f->reflection);
  EXPECT_EQ(f->log_level, "debug");
  EXPECT_EQ(f->device_memory_budgets, std::vector<std::string>{"cpu=2G"});

  const std::string path = Write(
      dir,
      "listen: 127.0.0.1:1\nmetrics-listen: 127.0.0.1:2\ndata-dir: /f/data\n"
      "allowed-root: [/f/root]\nmax-concurrent-jobs: 2\nthreads: 2\n"
      "cpu-workers: 2\nmax-queued-jobs: 2\nmax-spec-bytes: 2048\n"
      "drain-timeout: 2\njournal-max-bytes: 2\njournal-reserve-bytes: 2\n"
      "max-interrupted-runs: 2\nmax-result-streams: 2\njob-retention: 2h\n"
      "keepalive-time: 2\nkeepalive-timeout: 2\nready-file: /f/ready\n"
      "tls-cert: /f/cert\ntls-key: /f/key\ntls-client-ca: /f/ca\n"
      "auth-token-file: /f/tokens\nadmin-principal: [f-admin]\n"
      "metrics-token-file: /f/metrics\nauth-reload-interval: 2\n"
      "max-queued-jobs-per-principal: 2\ninsecure: false\nreflection: true\n"
      "log-level: debug\ndevice-memory-budget: [cpu=2G]\n");
  absl::StatusOr<ServerConfig> c = Parse({"--config",
                                          path,
                                          "--listen",
                                          "127.0.0.1:3",
                                          "--metrics-listen",
                                          "127.0.0.1:4",
                                          "--data-dir",
                                          "/c/data",
                                          "--allowed-root",
                                          "/c/root",
                                          "--max-concurrent-jobs",
                                          "3",
                                          "--threads",
                                          "3",
                                          "--cpu-workers",
                                          "3",
                                          "--max-queued-jobs",
                                          "3",
                                          "--max-spec-bytes",
                                          "3072",
                                          "--drain-timeout",
                                          "3",
                                          "--journal-max-bytes",
                                          "3",
                                          "--journal-reserve-bytes",
                                          "3",
                                          "--max-interrupted-runs",
                                          "3",
                                          "--max-result-streams",
                                          "3",
                                          "--job-retention",
                                          "3h",
                                          "--keepalive-time",
                                          "3",
                                          "--keepalive-timeout",
                                          "3",
                                          "--ready-file",
                                          "/c/ready",
                                          "--tls-cert",
                                          "/c/cert",
                                          "--tls-key",
                                          "/c/key",
                                          "--tls-client-ca",
                                          "/c/ca",
                                          "--auth-token-file",
                                          "/c/tokens",
                                          "--admin-principal",
                                          "c-admin",
                                          "--metrics-token-file",
                                          "/c/metrics",
                                          "--auth-reload-interval",
                                          "3",
                                          "--max-queued-jobs-per-principal",
                                          "3",
                                          "--insecure",
                                          "--reflection",
                                          "false",
                                          "--log-level",
                                          "error",
                                          "--device-memory-budget",
                                          "cpu=3G"});
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->listen, "127.0.0.1:3");
  EXPECT_EQ(c->metrics_listen, "127.0.0.1:4");
  EXPECT_EQ(c->data_dir, "/c/data");
  EXPECT_EQ(c->allowed_roots, std::vector<std::string>{"/c/root"});
  EXPECT_EQ(c->max_concurrent_jobs, 3);
  EXPECT_EQ(c->threads, 3);
  EXPECT_EQ(c->cpu_workers, 3);
  EXPECT_EQ(c->max_queued_jobs, 3);
  EXPECT_EQ(c->max_spec_bytes, 3072);
  EXPECT_EQ(c->drain_timeout_seconds, 3);
  EXPECT_EQ(c->journal_max_bytes, 3);
  EXPECT_EQ(c->journal_reserve_bytes, 3);
  EXPECT_EQ(c->max_interrupted_runs, 3);
  EXPECT_EQ(c->max_result_streams, 3);
  EXPECT_EQ(c->job_retention, "3h");
  EXPECT_EQ(c->keepalive_time_seconds, 3);
  EXPECT_EQ(c->keepalive_timeout_seconds, 3);
  EXPECT_EQ(c->ready_file, "/c/ready");
  EXPECT_EQ(c->tls_cert, "/c/cert");
  EXPECT_EQ(c->tls_key, "/c/key");
  EXPECT_EQ(c->tls_client_ca, "/c/ca");
  EXPECT_EQ(c->auth_token_file, "/c/tokens");
  EXPECT_EQ(c->admin_principals, std::vector<std::string>{"c-admin"});
  EXPECT_EQ(c->metrics_token_file, "/c/metrics");
  EXPECT_EQ(c->auth_reload_seconds, 3);
  EXPECT_EQ(c->max_queued_jobs_per_principal, 3);
  EXPECT_TRUE(c->insecure);
  EXPECT_FALSE(c->reflection);
  EXPECT_EQ(c->log_level, "error");
  EXPECT_EQ(c->device_memory_budgets, std::vector<std::string>{"cpu=3G"});
}

TEST(ServerConfigTest, BadSettingsNameTheSettingAndTheRule) {
  TempDir dir;
  absl::StatusOr<ServerConfig> c =
      Parse({"--config", Write(dir, "max-queued: 3\n")});
  EXPECT_EQ(c.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(absl::StrContains(c.status().message(), "max-queued"));
  c = Parse({"--config", Write(dir, "max-queued-jobs: many\n")});
  EXPECT_TRUE(absl::StrContains(c.status().message(), "an integer"))
      << c.status();
  c = Parse({"--config", Write(dir, "[1, 2]\n")});
  EXPECT_EQ(c.status().code(), absl::StatusCode::kInvalidArgument);
  c = Parse({"--drain-timeout", "30"});
  EXPECT_TRUE(absl::StrContains(c.status().message(), "drain-timeout"));
  c = Parse({"--listen", "localhost"});
  EXPECT_TRUE(absl::StrContains(c.status().message(), "HOST:PORT"));
  c = Parse({"--metrics-listen", "127.0.0.1:99999"});
  EXPECT_TRUE(absl::StrContains(c.status().message(), "65535"));
  c = Parse({"--listen", "127.0.0.1:99999999999999999999999"});
  EXPECT_TRUE(absl::StrContains(c.status().message(), "65535"));
  c = Parse({"--max-concurrent-jobs", "0"});
  EXPECT_TRUE(absl::StrContains(c.status().message(), "max-concurrent-jobs"));
  c = Parse({"--max-spec-bytes", "10"});
  EXPECT_TRUE(absl::StrContains(c.status().message(), "max-spec-bytes"));
}

// Issue #12: the compute threads and their worker slots.
TEST(ServerConfigTest, ThreadsAndCpuWorkers) {
  absl::StatusOr<ServerConfig> c = Parse({});
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->threads, 0);      // the cgroup's quota
  EXPECT_EQ(c->cpu_workers, 0);  // one worker per thread
  TempDir dir;
  c = Parse({"--config", Write(dir, "threads: 4\ncpu_workers: 3\n"),
             "--cpu-workers", "2"});
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->threads, 4);
  EXPECT_EQ(c->cpu_workers, 2);  // the flag wins
  c = Parse({"--cpu-workers", "-1"});
  EXPECT_EQ(c.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(absl::StrContains(c.status().message(), "cpu-workers"));
  EXPECT_TRUE(absl::StrContains(c.status().message(), "0..256"));
  c = Parse({"--threads", "257"});
  EXPECT_TRUE(absl::StrContains(c.status().message(), "threads"));
  c = Parse({"--config", Write(dir, "cpu-workers: lots\n")});
  EXPECT_TRUE(absl::StrContains(c.status().message(), "an integer"));
}

TEST(ServerConfigTest, FaultLimits) {
  absl::StatusOr<ServerConfig> c = Parse({});
  ASSERT_TRUE(c.ok());
  EXPECT_EQ(c->journal_max_bytes, 0);
  EXPECT_EQ(c->journal_reserve_bytes, int64_t{256} << 20);
  EXPECT_EQ(c->max_interrupted_runs, 2);
  EXPECT_EQ(c->max_result_streams, 64);
  TempDir dir;
  c = Parse({"--config",
             Write(dir,
                   "journal_max_bytes: 1000\njournal-reserve-bytes: 5\n"
                   "max-interrupted-runs: 3\nmax_result_streams: 9\n"),
             "--max-result-streams", "7"});
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->journal_max_bytes, 1000);
  EXPECT_EQ(c->journal_reserve_bytes, 5);
  EXPECT_EQ(c->max_interrupted_runs, 3);
  EXPECT_EQ(c->max_result_streams, 7);
  for (const std::vector<std::string>& bad :
       std::vector<std::vector<std::string>>{
           {"--journal-max-bytes", "-1"},
           {"--journal-reserve-bytes", "-5"},
           {"--max-interrupted-runs", "0"},
           {"--max-result-streams", "0"},
           {"--max-result-streams", "100000"}}) {
    c = Parse(bad);
    EXPECT_EQ(c.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_TRUE(absl::StartsWith(c.status().message(), bad[0].substr(2)))
        << c.status();
  }
}

TEST(ServerConfigTest, DeviceMemoryBudgets) {
  absl::StatusOr<ServerConfig> c =
      Parse({"--device-memory-budget", "cpu=8Gi", "--device-memory-budget",
             "cuda=0.8", "--device-memory-budget", "cuda:1=20G"});
  ASSERT_TRUE(c.ok()) << c.status();
  auto budgets = c->DeviceBudgets();
  ASSERT_TRUE(budgets.ok());
  ASSERT_EQ(budgets->size(), 3u);
  EXPECT_EQ(budgets->at("cpu").bytes, int64_t{8} << 30);
  EXPECT_EQ(budgets->at("cuda").fraction, 0.8);
  EXPECT_EQ(budgets->at("cuda:1").bytes, 20000000000);

  TempDir dir;
  c = Parse({"--config", Write(dir, "device_memory_budget: {cpu: 512Mi}\n")});
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->DeviceBudgets()->at("cpu").bytes, int64_t{512} << 20);
  c = Parse(
      {"--config", Write(dir, "device-memory-budget: [cpu=0.25, cuda=1]\n")});
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->DeviceBudgets()->at("cpu").fraction, 0.25);

  for (const std::vector<std::string>& bad :
       std::vector<std::vector<std::string>>{
           {"--device-memory-budget", "cpu"},
           {"--device-memory-budget", "tpu=1G"},
           {"--device-memory-budget", "cpu=1.5"},
           {"--device-memory-budget", "cpu=lots"},
           {"--device-memory-budget", "cpu=1G", "--device-memory-budget",
            "cpu=2G"}}) {
    c = Parse(bad);
    EXPECT_EQ(c.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_TRUE(
        absl::StartsWith(c.status().message(), "device-memory-budget: "))
        << c.status();
  }
  c = Parse({"--config", Write(dir, "device-memory-budget: {cpu: [1]}\n")});
  EXPECT_TRUE(absl::StrContains(c.status().message(), "device-memory-budget"))
      << c.status();
}

// Issue #14 point 5 (security): the listen address and the auth flags.
// Point 5: without authentication only loopback, unless --insecure.
TEST(SafeDefaultsTest, NonLoopbackListenNeedsAuthenticationOrInsecure) {
  for (const char* host :
       {"127.0.0.1:1", "127.9.9.9:1", "localhost:1", "[::1]:1"}) {
    EXPECT_TRUE(Parse({"--listen", host}).ok()) << host;
  }
  for (const char* host : {"0.0.0.0:50051", "[::]:50051", "10.0.0.1:1",
                           "tailord.example.com:443"}) {
    absl::StatusOr<ServerConfig> c = Parse({"--listen", host});
    ASSERT_FALSE(c.ok()) << host;
    EXPECT_TRUE(absl::StrContains(c.status().message(), "not a loopback"))
        << c.status();
    EXPECT_TRUE(absl::StrContains(c.status().message(), "--insecure"));
    EXPECT_TRUE(Parse({"--listen", host, "--insecure"}).ok());
    EXPECT_TRUE(Parse({"--listen", host, "--auth-token-file", "/t"}).ok());
    EXPECT_TRUE(Parse({"--listen", host, "--tls-cert", "c", "--tls-key", "k",
                       "--tls-client-ca", "ca"})
                    .ok());
    // TLS alone authenticates no one.
    EXPECT_FALSE(
        Parse({"--listen", host, "--tls-cert", "c", "--tls-key", "k"}).ok());
  }
}

TEST(SafeDefaultsTest, SecuritySettingsAreChecked) {
  EXPECT_FALSE(Parse({"--tls-cert", "c"}).ok());
  EXPECT_FALSE(Parse({"--tls-key", "k"}).ok());
  EXPECT_FALSE(Parse({"--tls-client-ca", "ca"}).ok());
  EXPECT_FALSE(Parse({"--admin-principal", "root"}).ok());
  EXPECT_FALSE(Parse({"--auth-reload-interval", "0"}).ok());
  EXPECT_FALSE(Parse({"--max-queued-jobs-per-principal", "-1"}).ok());
  absl::StatusOr<ServerConfig> c = Parse({"--reflection=false"});
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_FALSE(c->reflection);
  TempDir dir;
  const std::string yaml = dir.Join("c.yaml");
  std::ofstream(yaml) << "listen: 0.0.0.0:1\nauth_token_file: /t\n"
                         "admin-principal: [root]\nreflection: false\n";
  c = Parse({"--config", yaml});
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->admin_principals, std::vector<std::string>{"root"});
}

// Issue #17 point 7: --job-retention (a whole number with a unit, or 0).
TEST(ServerConfigTest, JobRetentionTakesAUnitOrZero) {
  absl::StatusOr<ServerConfig> c = Parse({});
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(*c->JobRetention(), absl::Hours(24 * 30));  // the default
  for (const auto& [text, want] :
       std::vector<std::pair<std::string, absl::Duration>>{
           {"0", absl::ZeroDuration()},
           {"90s", absl::Seconds(90)},
           {"15m", absl::Minutes(15)},
           {"12h", absl::Hours(12)},
           {"7d", absl::Hours(24 * 7)}}) {
    c = Parse({"--job-retention", text});
    ASSERT_TRUE(c.ok()) << text << ": " << c.status();
    EXPECT_EQ(*c->JobRetention(), want) << text;
  }
  TempDir dir;
  c = Parse({"--config", Write(dir, "job_retention: 2d\n")});
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(*c->JobRetention(), absl::Hours(48));
  for (const std::string bad : {"5", "1w", "-1d", "+1d", "d", "1.5h", "",
                                "99999999999999d", "36501d"}) {
    c = Parse({"--job-retention", bad});
    EXPECT_EQ(c.status().code(), absl::StatusCode::kInvalidArgument) << bad;
    EXPECT_TRUE(absl::StartsWith(c.status().message(), "job-retention"))
        << bad << ": " << c.status();
    EXPECT_LT(c.status().message().size(), 300u);
  }
}

// Issue #17 point 8: keepalive settings and their bounds.
TEST(ServerConfigTest, KeepaliveHasDefaultsAndBounds) {
  absl::StatusOr<ServerConfig> c = Parse({});
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->keepalive_time_seconds, 30);
  EXPECT_EQ(c->keepalive_timeout_seconds, 20);
  // A client pinging at the server's floor keeps its pings below the
  // server's keepalive, so both sides' pings are accepted.
  EXPECT_LE(ServerConfig::kMinClientPingIntervalSeconds,
            c->keepalive_time_seconds);
  c = Parse({"--keepalive-time", "45", "--keepalive-timeout", "5"});
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->keepalive_time_seconds, 45);
  EXPECT_EQ(c->keepalive_timeout_seconds, 5);
  c = Parse({"--keepalive-time", "0"});
  EXPECT_TRUE(absl::StartsWith(c.status().message(), "keepalive-time"))
      << c.status();
  c = Parse({"--keepalive-timeout", "601"});
  EXPECT_TRUE(absl::StartsWith(c.status().message(), "keepalive-timeout"))
      << c.status();
}

// Issue #16: the remote-storage settings, from the file and the flags.
TEST(ServerConfigTest, RemoteStorageSettings) {
  TempDir dir;
  const std::string path =
      Write(dir,
            "allowed-root: [/data, 's3://bkt/models/']\ncache-dir: /cache\n"
            "cache-bytes: 1000\n");
  absl::StatusOr<ServerConfig> c = Parse(
      {"--config", path, "--ca-file", "/etc/ca.pem", "--cache-bytes", "2000"});
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->allowed_roots,
            (std::vector<std::string>{"/data", "s3://bkt/models/"}));
  EXPECT_EQ(c->cache_dir, "/cache");
  EXPECT_EQ(c->cache_bytes, 2000u);  // the flag wins
  EXPECT_EQ(c->ca_file, "/etc/ca.pem");
  absl::StatusOr<ServerConfig> d = Parse({});
  ASSERT_TRUE(d.ok());
  EXPECT_TRUE(d->cache_dir.empty());
  EXPECT_EQ(d->cache_bytes, uint64_t{64} << 30);
  CLI::App app;
  ServerFlags flags;
  flags.Add(app);
  const std::string help = app.help();
  for (const char* flag :
       {"--ca-file", "--cache-dir", "--cache-bytes", "s3://bucket/prefix/"}) {
    EXPECT_TRUE(absl::StrContains(help, flag)) << flag;
  }
}

}  // namespace
}  // namespace tailor::server
