// hf:// against a loopback Hub-compatible endpoint (storage/hf_store.h),
// through NewRemoteStoreProvider with HF_ENDPOINT and HF_TOKEN.

#include "storage/hf_store.h"

#include <sys/stat.h>

#include <memory>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "storage/remote_fixture.h"
#include "storage/remote_store_provider.h"
#include "storage/remote_test_util.h"
#include "testing/temp_dir.h"

namespace tailor {
namespace {

using ::tailor::testing::FixtureServer;
using ::tailor::testing::MapEnv;
using ::tailor::testing::RandomBytes;
using ::tailor::testing::TempDir;
using ::testing::HasSubstr;

constexpr char kToken[] = "hf_secretToken12345";

class HfStoreTest : public ::testing::Test {
 protected:
  void SetUp() override {
    const std::string repo = tmp_.Join("hub/org/model/main");
    for (const std::string& d :
         {tmp_.Join("hub"), tmp_.Join("hub/org"), tmp_.Join("hub/org/model"),
          repo, repo + "/lfs", repo + "/sub"}) {
      ASSERT_EQ(mkdir(d.c_str(), 0755), 0) << d;
    }
    config_ = "{\"model_type\": \"llama\"}";
    weights_ = RandomBytes(100000, 21);
    testing::WriteFile(repo + "/config.json", config_);
    testing::WriteFile(repo + "/lfs/model.safetensors", weights_);
    testing::WriteFile(repo + "/sub/a.txt", "a");
    testing::WriteFile(repo + "/sub/b.txt", "b");
    log_ = tmp_.Join("hub.jsonl");
    absl::StatusOr<FixtureServer> s = FixtureServer::Start(
        {"hub", "--root", tmp_.Join("hub"), "--token", kToken, "--log", log_});
    ASSERT_TRUE(s.ok()) << s.status();
    hub_ = std::make_unique<FixtureServer>(*std::move(s));
  }

  std::shared_ptr<ObjectStore> Store(const std::string& token) {
    RemoteOptions o;
    o.max_attempts = 2;
    o.initial_backoff = absl::Milliseconds(10);
    auto provider = NewRemoteStoreProvider(
        o, MapEnv({{"HF_ENDPOINT",
                    absl::StrCat("http://127.0.0.1:", hub_->port())},
                   {"HF_TOKEN", token}}));
    EXPECT_TRUE(provider.ok()) << provider.status();
    auto store =
        (*provider)->StoreFor(ObjectUri{"hf", "org/model", "", "main"});
    EXPECT_TRUE(store.ok());
    return *store;
  }
  static ObjectUri Uri(const std::string& s) {
    absl::StatusOr<ObjectUri> u = ParseObjectUri(s);
    EXPECT_TRUE(u.ok()) << u.status();
    return *u;
  }
  std::vector<nlohmann::json> Log() {
    std::vector<nlohmann::json> out;
    for (absl::string_view line :
         absl::StrSplit(testing::ReadFile(log_), '\n', absl::SkipEmpty())) {
      out.push_back(nlohmann::json::parse(line));
    }
    return out;
  }

  TempDir tmp_;
  std::string log_, config_, weights_;
  std::unique_ptr<FixtureServer> hub_;
};

TEST_F(HfStoreTest, ResolvesFilesAndFollowsRedirectsWithoutLeakingTheToken) {
  auto store = Store(kToken);
  // A small file served by the endpoint itself.
  ObjectUri config = Uri("hf://org/model/config.json");
  absl::StatusOr<ObjectInfo> info = store->Stat(config);
  ASSERT_TRUE(info.ok()) << info.status();
  EXPECT_EQ(info->size, config_.size());
  std::string out(info->size, '\0');
  ASSERT_TRUE(store->ReadRange(config, *info, 0, out.size(), out.data()).ok());
  EXPECT_EQ(out, config_);

  // A large file redirected to the "CDN" (another host name).
  ObjectUri weights = Uri("hf://org/model@main/lfs/model.safetensors");
  info = store->Stat(weights);
  ASSERT_TRUE(info.ok()) << info.status();
  EXPECT_EQ(info->size, weights_.size());
  out.assign(4000, '\0');
  absl::Status s = store->ReadRange(weights, *info, 50000, 4000, out.data());
  ASSERT_TRUE(s.ok()) << s;
  EXPECT_EQ(out, weights_.substr(50000, 4000));

  int resolve = 0, cdn = 0;
  for (const nlohmann::json& e : Log()) {
    const std::string path = e["path"];
    if (absl::StartsWith(path, "/cdn/")) {
      ++cdn;
      EXPECT_TRUE(e["authorization"].is_null()) << e.dump();
      EXPECT_TRUE(absl::StartsWith(e["host"].get<std::string>(), "localhost"));
    } else {
      ++resolve;
      EXPECT_EQ(e["authorization"], absl::StrCat("Bearer ", kToken));
      EXPECT_TRUE(absl::StartsWith(path, "/org/model/resolve/main/")) << path;
    }
  }
  EXPECT_EQ(cdn, 2);
  EXPECT_EQ(resolve, 4);
}

TEST_F(HfStoreTest, WithoutTheTokenItIsPermissionDeniedWithoutSecrets) {
  auto store = Store("hf_wrongToken999");
  absl::StatusOr<ObjectInfo> info =
      store->Stat(Uri("hf://org/model/config.json"));
  ASSERT_EQ(info.status().code(), absl::StatusCode::kPermissionDenied)
      << info.status();
  EXPECT_THAT(info.status().message(), HasSubstr("hf://org/model/config.json"));
  EXPECT_THAT(info.status().message(),
              ::testing::Not(HasSubstr("hf_wrongToken999")));
  EXPECT_EQ(store->Stat(Uri("hf://org/model/nope.json")).status().code(),
            absl::StatusCode::kPermissionDenied);
  EXPECT_EQ(
      Store(kToken)->Stat(Uri("hf://org/model/nope.json")).status().code(),
      absl::StatusCode::kNotFound);
}

TEST_F(HfStoreTest, ListsTheTreeAcrossPages) {
  auto store = Store(kToken);
  absl::StatusOr<std::vector<ObjectUri>> all =
      store->List(Uri("hf://org/model/"));
  ASSERT_TRUE(all.ok()) << all.status();
  std::vector<std::string> keys;
  for (const ObjectUri& u : *all) {
    EXPECT_EQ(u.scheme, "hf");
    EXPECT_EQ(u.bucket, "org/model");
    EXPECT_EQ(u.revision, "main");
    keys.push_back(u.key);
  }
  EXPECT_EQ(keys,
            (std::vector<std::string>{"config.json", "lfs/model.safetensors",
                                      "sub/a.txt", "sub/b.txt"}));
  absl::StatusOr<std::vector<ObjectUri>> sub =
      store->List(Uri("hf://org/model/sub/"));
  ASSERT_TRUE(sub.ok()) << sub.status();
  ASSERT_EQ(sub->size(), 2u);
  EXPECT_EQ((*sub)[0].key, "sub/a.txt");
  EXPECT_EQ(store->BeginUpload(Uri("hf://org/model/x")).status().code(),
            absl::StatusCode::kPermissionDenied);
}

}  // namespace
}  // namespace tailor
