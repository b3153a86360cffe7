#include "server_config.h"

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
            "listen: 0.0.0.0:7000\nmax_queued_jobs: 5\n"
            "allowed-root: [/data, /models]\ndrain-timeout: 12.5\n");
  absl::StatusOr<ServerConfig> c =
      Parse({"--config", path, "--max-queued-jobs", "9"});
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->listen, "0.0.0.0:7000");
  EXPECT_EQ(c->max_queued_jobs, 9);  // the flag wins
  EXPECT_EQ(c->allowed_roots, (std::vector<std::string>{"/data", "/models"}));
  EXPECT_EQ(c->drain_timeout_seconds, 12.5);
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

}  // namespace
}  // namespace tailor::server
