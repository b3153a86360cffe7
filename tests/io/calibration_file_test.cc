// The calibration file's writer and reader together: what
// WriteCalibrationFile writes, CalibrationFile reads back (tailor-hessian/1).

#include "io/calibration_file.h"

#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "storage/uri_resolver.h"
#include "testing/memory_object_store.h"
#include "absl/strings/str_cat.h"
#include "testing/test_util.h"
#include "util/file_util.h"

namespace tailor {
namespace {

using ::tailor::testing::BitEqual;
using ::tailor::testing::ReadFileOrDie;
using ::tailor::testing::TempDir;

at::Tensor Symmetric(int64_t c, uint64_t seed) {
  at::manual_seed(seed);
  const at::Tensor x = at::randn({2 * c, c});
  return x.t().mm(x).contiguous();
}

TEST(CalibrationFileTest, WriterOutputReadsBack) {
  TempDir dir;
  const std::string path = dir.Join("calib.safetensors");
  const std::map<std::string, at::Tensor> hessians = {
      {"model.layers.0.mlp.up_proj.hessian", Symmetric(6, 1)},
      {"model.layers.0.self_attn.q_proj.hessian", Symmetric(4, 2)}};
  std::map<std::string, int64_t> columns;
  for (const auto& [key, h] : hessians) columns[key] = h.size(0);
  const std::map<std::string, std::string> aliases = {
      {"model.layers.0.self_attn.k_proj.weight",
       "model.layers.0.self_attn.q_proj.hessian"}};
  std::vector<std::string> asked;
  ASSERT_TRUE(WriteCalibrationFile(path, 96, columns, aliases,
                                   [&](const std::string& key) {
                                     asked.push_back(key);
                                     return hessians.at(key);
                                   })
                  .ok());
  // One matrix asked for at a time, in key order.
  EXPECT_EQ(asked, (std::vector<std::string>{
                       "model.layers.0.mlp.up_proj.hessian",
                       "model.layers.0.self_attn.q_proj.hessian"}));
  // Nothing left beside it (the staging directory is gone).
  absl::StatusOr<std::vector<std::string>> names = ListDirectory(dir.path());
  ASSERT_TRUE(names.ok());
  EXPECT_EQ(*names, std::vector<std::string>{"calib.safetensors"});

  absl::StatusOr<std::unique_ptr<CalibrationFile>> file =
      CalibrationFile::Open(path, {});
  ASSERT_TRUE(file.ok()) << file.status();
  EXPECT_EQ((*file)->nsamples(), 96);
  EXPECT_EQ((*file)->aliases(), aliases);
  for (const auto& [key, h] : hessians) {
    absl::StatusOr<at::Tensor> read = (*file)->Load(key);
    ASSERT_TRUE(read.ok()) << read.status();
    EXPECT_TRUE(BitEqual(*read, h)) << key;
  }
  // The weight -> key rule and the alias.
  EXPECT_EQ((*file)->KeyFor("model.layers.0.mlp.up_proj.weight"),
            "model.layers.0.mlp.up_proj.hessian");
  EXPECT_EQ((*file)->KeyFor("model.layers.0.self_attn.k_proj.weight"),
            "model.layers.0.self_attn.q_proj.hessian");
  EXPECT_EQ((*file)->KeyFor("model.layers.0.mlp.down_proj.weight"),
            std::nullopt);
  EXPECT_EQ((*file)->KeyFor("model.layers.0.mlp.up_proj.bias"), std::nullopt);
  // The format tag the reader checks is the one the writer wrote.
  EXPECT_TRUE(absl::StrContains(ReadFileOrDie(path),
                                absl::StrCat("\"", kHessianFormat, "\"")));
}

TEST(CalibrationFileTest, WriterRefusesAnExistingPathAndLeavesIt) {
  TempDir dir;
  const std::string path = dir.Join("calib.safetensors");
  ::tailor::testing::WriteFileOrDie(path, "keep me");
  bool asked = false;
  absl::Status s = WriteCalibrationFile(
      path, 8, {{"a.hessian", 2}}, {}, [&](const std::string&) {
        asked = true;
        return absl::StatusOr<at::Tensor>(Symmetric(2, 3));
      });
  EXPECT_EQ(s.code(), absl::StatusCode::kAlreadyExists) << s;
  EXPECT_FALSE(asked);
  EXPECT_EQ(ReadFileOrDie(path), "keep me");
}

TEST(CalibrationFileTest, AHessianErrorFailsTheWriteAndLeavesNothing) {
  TempDir dir;
  const std::string path = dir.Join("calib.safetensors");
  absl::Status s = WriteCalibrationFile(
      path, 8, {{"a.hessian", 2}}, {}, [](const std::string&) {
        return absl::StatusOr<at::Tensor>(absl::InternalError("no values"));
      });
  EXPECT_EQ(s.code(), absl::StatusCode::kInternal) << s;
  absl::StatusOr<std::vector<std::string>> names = ListDirectory(dir.path());
  ASSERT_TRUE(names.ok());
  EXPECT_TRUE(names->empty());
}

TEST(CalibrationFileTest, ARemotePathGetsTheBytesOfALocalWrite) {
  // Issue #16: s3:// staged in the scratch directory, uploaded once whole;
  // an existing object is never replaced.
  TempDir dir;
  auto store = std::make_shared<::tailor::testing::MemoryObjectStore>();
  UriResolver::Remote remote;
  remote.provider =
      std::make_shared<::tailor::testing::MemoryStoreProvider>(store);
  remote.scratch_dir = dir.Join("scratch");
  const UriResolver resolver =
      UriResolver::Create({dir.path(), "s3://bkt/calib/"}, {}, remote).value();
  const std::map<std::string, at::Tensor> hessians = {
      {"model.layers.0.mlp.up_proj.hessian", Symmetric(6, 3)}};
  const std::map<std::string, int64_t> columns = {
      {"model.layers.0.mlp.up_proj.hessian", 6}};
  auto hessian = [&](const std::string& key) { return hessians.at(key); };
  const std::string local = dir.Join("local.safetensors");
  ASSERT_TRUE(WriteCalibrationFile(local, 12, columns, {}, hessian).ok());
  const std::string uri = "s3://bkt/calib/h.safetensors";
  const absl::Status written =
      WriteCalibrationFile(uri, 12, columns, {}, hessian, &resolver);
  ASSERT_TRUE(written.ok()) << written;
  std::string bytes;
  ASSERT_TRUE(store->Get(uri, &bytes));
  EXPECT_EQ(bytes, ReadFileOrDie(local));
  EXPECT_TRUE(store->PendingUploads().empty());
  EXPECT_TRUE(ListDirectory(dir.Join("scratch"))->empty());

  store->Put(uri, "theirs");
  const absl::Status again =
      WriteCalibrationFile(uri, 12, columns, {}, hessian, &resolver);
  EXPECT_EQ(again.code(), absl::StatusCode::kAlreadyExists) << again;
  EXPECT_TRUE(absl::StrContains(again.message(), uri)) << again;
  ASSERT_TRUE(store->Get(uri, &bytes));
  EXPECT_EQ(bytes, "theirs");
  // Without a resolver a remote path cannot be written.
  EXPECT_FALSE(WriteCalibrationFile("s3://bkt/calib/x.safetensors", 12, columns,
                                    {}, hessian)
                   .ok());
}

// A partial file's shard record (calibration_shard.h) reads back; a
// malformed one is refused naming the file and the rule.
TEST(CalibrationFileTest, ShardRecordReadsBackAndIsChecked) {
  TempDir dir;
  const std::map<std::string, int64_t> columns = {
      {"model.layers.0.mlp.up_proj.hessian", 4}};
  auto hessian = [](const std::string&) { return Symmetric(4, 3); };
  CalibrationShard shard;
  shard.index = 1;
  shard.count = 3;
  shard.windows = 9;
  shard.model = std::string(64, 'a');
  shard.data = std::string(64, 'b');
  const std::string good = dir.Join("good.safetensors");
  ASSERT_TRUE(WriteCalibrationFile(
                  good, 3, columns, {}, hessian, nullptr,
                  {{kCalibrationShardKey, CalibrationShardJson(shard)}})
                  .ok());
  absl::StatusOr<std::unique_ptr<CalibrationFile>> file =
      CalibrationFile::Open(good, {});
  ASSERT_TRUE(file.ok()) << file.status();
  ASSERT_TRUE((*file)->shard().has_value());
  EXPECT_EQ((*file)->shard()->index, 1);
  EXPECT_EQ((*file)->shard()->count, 3);
  EXPECT_EQ((*file)->shard()->windows, 9);
  EXPECT_EQ((*file)->shard()->model, shard.model);
  EXPECT_EQ((*file)->shard()->data, shard.data);
  const std::vector<std::pair<std::string, std::string>> bad = {
      {"[1]", "must be a JSON object"},
      {R"({"index": 3, "count": 3, "windows": 9, "model": ")" +
           std::string(64, 'a') + R"(", "data": ")" + std::string(64, 'b') +
           R"("})",
       "0 <= index < count"},
      {R"({"index": 0, "count": 3, "windows": 9, "model": "x", "data": "y"})",
       "'model' must be a sha256"},
      {R"({"index": 0, "count": 3, "model": "x"})", "'windows' must be"}};
  for (size_t i = 0; i < bad.size(); ++i) {
    const std::string path = dir.Join(absl::StrCat("bad", i));
    ASSERT_TRUE(WriteCalibrationFile(path, 3, columns, {}, hessian, nullptr,
                                     {{kCalibrationShardKey, bad[i].first}})
                    .ok());
    file = CalibrationFile::Open(path, {});
    ASSERT_FALSE(file.ok()) << bad[i].first;
    EXPECT_EQ(file.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_TRUE(absl::StrContains(file.status().message(), path))
        << file.status();
    EXPECT_TRUE(absl::StrContains(file.status().message(), bad[i].second))
        << file.status();
  }
}

TEST(CalibrationFileTest, HessianKeyOf) {
  EXPECT_EQ(HessianKeyOf("model.layers.3.mlp.down_proj.weight"),
            "model.layers.3.mlp.down_proj.hessian");
  EXPECT_EQ(HessianKeyOf("model.norm.bias"), std::nullopt);
  EXPECT_EQ(HessianKeyOf("weight"), std::nullopt);  // no "." before it
}

}  // namespace
}  // namespace tailor
