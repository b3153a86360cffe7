#include "io/checkpoint.h"

#include <ATen/ATen.h>
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <thread>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "testing/test_util.h"
#include "util/file_util.h"

namespace tailor {
namespace {

using ::tailor::testing::BitEqual;
using ::tailor::testing::RawTensor;
using ::tailor::testing::SerializeSafetensors;
using ::tailor::testing::TempDir;
using ::tailor::testing::ToRaw;
using ::tailor::testing::WriteFileOrDie;
using ::tailor::testing::WriteShardedCheckpoint;

class CheckpointTest : public ::testing::Test {
 protected:
  void SetUp() override {
    at::manual_seed(7);
    w1_ = at::randn({4, 6}).to(at::kBFloat16);
    w2_ = at::randn({3, 5}).to(at::kHalf);
    b_ = at::randn({6});
    ids_ = at::arange(10, at::kLong);
  }
  std::vector<RawTensor> All() const {
    return {ToRaw("layer.weight", w1_), ToRaw("layer2.weight", w2_),
            ToRaw("layer.bias", b_), ToRaw("position_ids", ids_)};
  }
  TempDir dir_;
  at::Tensor w1_, w2_, b_, ids_;
};

TEST_F(CheckpointTest, SingleFileDirectoryReadsEveryTensor) {
  WriteFileOrDie(dir_.Join("model.safetensors"), SerializeSafetensors(All()));
  auto ckpt = Checkpoint::Open(dir_.path());
  ASSERT_TRUE(ckpt.ok()) << ckpt.status();
  EXPECT_FALSE((*ckpt)->sharded());
  ASSERT_EQ((*ckpt)->tensors().size(), 4u);
  // Sorted by name.
  EXPECT_EQ((*ckpt)->tensors()[0].name, "layer.bias");
  EXPECT_EQ((*ckpt)->tensors()[3].name, "position_ids");

  // Default: floating -> float32, values exactly the stored ones widened.
  auto w1 = (*ckpt)->Read("layer.weight");
  ASSERT_TRUE(w1.ok()) << w1.status();
  EXPECT_EQ(w1->scalar_type(), at::kFloat);
  EXPECT_TRUE(BitEqual(*w1, w1_.to(at::kFloat)));
  // Keep the stored type.
  ReadOptions keep;
  keep.floating_dtype = std::nullopt;
  EXPECT_TRUE(BitEqual(*(*ckpt)->Read("layer.weight", keep), w1_));
  EXPECT_TRUE(BitEqual(*(*ckpt)->Read("layer2.weight", keep), w2_));
  // Integers keep their type whatever the floating dtype.
  EXPECT_TRUE(BitEqual(*(*ckpt)->Read("position_ids"), ids_));
  const TensorInfo* info = (*ckpt)->Find("layer.weight");
  ASSERT_NE(info, nullptr);
  EXPECT_EQ(info->dtype, DType::kBF16);
  EXPECT_EQ(info->shape, (std::vector<int64_t>{4, 6}));
  EXPECT_EQ(info->nbytes, 48u);
  EXPECT_EQ(info->file, "model.safetensors");
}

// A header length of 640, 896, 1152 or 1408 bytes begins 0x80 0x02..0x05,
// like a pickle stream: such a file is still read as safetensors (it was
// refused as a pickle), while a real pickle stream still is refused.
TEST_F(CheckpointTest, HeaderLengthThatLooksLikePickleMagicIsRead) {
  const std::string data(4 * 4, '\0');  // one F32 [4] of zeros
  for (uint64_t header_size : {640, 896, 1152, 1408}) {
    std::string json =
        R"({"w":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}})";
    json.resize(header_size, ' ');
    std::string bytes(8, '\0');
    for (int i = 0; i < 8; ++i) {
      bytes[i] = static_cast<char>((header_size >> (8 * i)) & 0xff);
    }
    ASSERT_EQ(static_cast<uint8_t>(bytes[0]), 0x80);
    const std::string path =
        dir_.Join(absl::StrCat("h", header_size, ".safetensors"));
    WriteFileOrDie(path, bytes + json + data);
    auto ckpt = Checkpoint::Open(path);
    ASSERT_TRUE(ckpt.ok()) << header_size << ": " << ckpt.status();
    auto t = (*ckpt)->Read("w");
    ASSERT_TRUE(t.ok()) << t.status();
    EXPECT_EQ(t->numel(), 4);
  }
  const std::string pickle = dir_.Join("p.safetensors");
  WriteFileOrDie(pickle, std::string("\x80\x02}q\x00(X\x06\x00\x00\x00w", 14));
  auto refused = Checkpoint::Open(pickle);
  ASSERT_FALSE(refused.ok());
  EXPECT_TRUE(absl::StrContains(refused.status().message(), "pickle"))
      << refused.status();
}

TEST_F(CheckpointTest, ReadRawReturnsStoredBytes) {
  WriteFileOrDie(dir_.Join("model.safetensors"), SerializeSafetensors(All()));
  auto ckpt = Checkpoint::Open(dir_.Join("model.safetensors"));
  ASSERT_TRUE(ckpt.ok()) << ckpt.status();
  auto raw = (*ckpt)->ReadRaw("layer.weight");
  ASSERT_TRUE(raw.ok());
  EXPECT_EQ(*raw, ToRaw("x", w1_).data);
}

TEST_F(CheckpointTest, UnknownTensorIsNotFound) {
  WriteFileOrDie(dir_.Join("model.safetensors"), SerializeSafetensors(All()));
  auto ckpt = Checkpoint::Open(dir_.path());
  ASSERT_TRUE(ckpt.ok());
  auto t = (*ckpt)->Read("nope");
  EXPECT_EQ(t.status().code(), absl::StatusCode::kNotFound);
  EXPECT_TRUE(absl::StrContains(t.status().message(), "'nope'"));
}

TEST_F(CheckpointTest, DtypeWithoutTorchTypeIsRawOnly) {
  RawTensor u16{"u", "U16", {2}, std::string("\x01\x00\x02\x00", 4)};
  WriteFileOrDie(dir_.Join("model.safetensors"), SerializeSafetensors({u16}));
  auto ckpt = Checkpoint::Open(dir_.path());
  ASSERT_TRUE(ckpt.ok()) << ckpt.status();
  auto t = (*ckpt)->Read("u");
  EXPECT_EQ(t.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(absl::StrContains(t.status().message(), "U16"));
  EXPECT_EQ(*(*ckpt)->ReadRaw("u"), u16.data);
}

TEST_F(CheckpointTest, ShardedCheckpointThroughIndex) {
  std::vector<RawTensor> all = All();
  WriteShardedCheckpoint(dir_.path(), {{all[0], all[1]}, {all[2]}, {all[3]}});
  auto ckpt = Checkpoint::Open(dir_.path());
  ASSERT_TRUE(ckpt.ok()) << ckpt.status();
  EXPECT_TRUE((*ckpt)->sharded());
  EXPECT_EQ((*ckpt)->files().size(), 3u);
  EXPECT_EQ((*ckpt)->Find("layer.bias")->file,
            "model-00002-of-00003.safetensors");
  EXPECT_EQ((*ckpt)->Find("position_ids")->file,
            "model-00003-of-00003.safetensors");
  EXPECT_TRUE(BitEqual(*(*ckpt)->Read("layer.bias"), b_));
  EXPECT_TRUE(BitEqual(*(*ckpt)->Read("position_ids"), ids_));
  EXPECT_TRUE((*ckpt)->warnings().empty());
  EXPECT_EQ((*ckpt)->index_total_size(), (*ckpt)->TotalBytes());

  // The index file itself may be named.
  auto by_index = Checkpoint::Open(dir_.Join(kIndexFileName));
  ASSERT_TRUE(by_index.ok()) << by_index.status();
  EXPECT_EQ((*by_index)->tensors().size(), 4u);
}

TEST_F(CheckpointTest, IndexTotalSizeMismatchIsAWarning) {
  std::vector<RawTensor> all = All();
  WriteShardedCheckpoint(dir_.path(), {{all[0]}, {all[1]}});
  std::string index = tailor::testing::ReadFileOrDie(dir_.Join(kIndexFileName));
  index.replace(index.find("\"total_size\": "), 14, "\"total_size\": 1");
  WriteFileOrDie(dir_.Join(kIndexFileName), index);
  auto ckpt = Checkpoint::Open(dir_.path());
  ASSERT_TRUE(ckpt.ok()) << ckpt.status();
  ASSERT_EQ((*ckpt)->warnings().size(), 1u);
  EXPECT_TRUE(absl::StrContains((*ckpt)->warnings()[0], "total_size"));
}

TEST_F(CheckpointTest, LoneSafetensorsFileWithOtherNameIsFound) {
  WriteFileOrDie(dir_.Join("weights.safetensors"), SerializeSafetensors(All()));
  WriteFileOrDie(dir_.Join("config.json"), "{}");
  auto ckpt = Checkpoint::Open(dir_.path());
  ASSERT_TRUE(ckpt.ok()) << ckpt.status();
  EXPECT_EQ((*ckpt)->tensors()[0].file, "weights.safetensors");
}

TEST_F(CheckpointTest, AmbiguousDirectoryIsRefused) {
  WriteFileOrDie(dir_.Join("a.safetensors"), SerializeSafetensors(All()));
  WriteFileOrDie(dir_.Join("b.safetensors"), SerializeSafetensors(All()));
  auto ckpt = Checkpoint::Open(dir_.path());
  EXPECT_EQ(ckpt.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(absl::StrContains(ckpt.status().message(), "a.safetensors"));
}

TEST_F(CheckpointTest, EmptyDirectoryIsNotFound) {
  auto ckpt = Checkpoint::Open(dir_.path());
  EXPECT_EQ(ckpt.status().code(), absl::StatusCode::kNotFound);
  EXPECT_TRUE(absl::StrContains(ckpt.status().message(), kIndexFileName));
}

TEST_F(CheckpointTest, MissingPathIsNotFound) {
  auto ckpt = Checkpoint::Open(dir_.Join("missing"));
  EXPECT_EQ(ckpt.status().code(), absl::StatusCode::kNotFound);
}

TEST_F(CheckpointTest, AdapterDirectoryNeedsABase) {
  WriteFileOrDie(dir_.Join("adapter_config.json"), "{}");
  WriteFileOrDie(dir_.Join("adapter_model.safetensors"),
                 SerializeSafetensors({}));
  auto ckpt = Checkpoint::Open(dir_.path());
  EXPECT_EQ(ckpt.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(absl::StrContains(ckpt.status().message(), "PEFT adapter"));
}

TEST_F(CheckpointTest, PickleCheckpointsAreRefusedWithAReason) {
  WriteFileOrDie(dir_.Join("pytorch_model.bin"), "\x80\x02junk");
  auto in_dir = Checkpoint::Open(dir_.path());
  EXPECT_EQ(in_dir.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(absl::StrContains(in_dir.status().message(), "execute"));
  EXPECT_TRUE(absl::StrContains(in_dir.status().message(), "safetensors"));
  for (const char* name : {"pytorch_model.bin", "model.pt", "model.pth"}) {
    WriteFileOrDie(dir_.Join(name), "PK\x03\x04");
    auto direct = Checkpoint::Open(dir_.Join(name));
    EXPECT_EQ(direct.status().code(), absl::StatusCode::kInvalidArgument)
        << name;
    EXPECT_TRUE(absl::StrContains(direct.status().message(), "pickle"))
        << direct.status();
  }
}

TEST_F(CheckpointTest, ShardSymlinkOutsideTheRootsIsDenied) {
  TempDir outside;
  std::vector<RawTensor> all = All();
  WriteShardedCheckpoint(outside.path(), {{all[0]}, {all[1], all[2], all[3]}});
  // The checkpoint directory sits inside the root, one shard links out.
  const std::string ckpt_dir = dir_.Join("ckpt");
  ASSERT_EQ(::mkdir(ckpt_dir.c_str(), 0755), 0);
  for (const char* f :
       {"model.safetensors.index.json", "model-00001-of-00002.safetensors"}) {
    ASSERT_TRUE(CopyFileDurably(outside.Join(f), JoinPath(ckpt_dir, f)).ok());
  }
  ASSERT_EQ(
      ::symlink(outside.Join("model-00002-of-00002.safetensors").c_str(),
                JoinPath(ckpt_dir, "model-00002-of-00002.safetensors").c_str()),
      0);
  auto resolver = UriResolver::Create({dir_.path()});
  ASSERT_TRUE(resolver.ok()) << resolver.status();
  Checkpoint::Options options;
  options.resolver = &*resolver;
  auto ckpt = Checkpoint::Open(ckpt_dir, options);
  EXPECT_EQ(ckpt.status().code(), absl::StatusCode::kPermissionDenied)
      << ckpt.status();
  // Without a resolver (trusted local use) the same checkpoint opens.
  EXPECT_TRUE(Checkpoint::Open(ckpt_dir).ok());
}

TEST_F(CheckpointTest, ConcurrentReadsAgree) {
  std::vector<RawTensor> all = All();
  WriteShardedCheckpoint(dir_.path(), {{all[0], all[1]}, {all[2], all[3]}});
  auto ckpt = Checkpoint::Open(dir_.path());
  ASSERT_TRUE(ckpt.ok());
  std::vector<std::thread> threads;
  std::atomic<int> mismatches{0};
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&] {
      for (int i = 0; i < 50; ++i) {
        auto raw = (*ckpt)->ReadRaw("layer.weight");
        if (!raw.ok() || *raw != ToRaw("x", w1_).data) ++mismatches;
      }
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_EQ(mismatches.load(), 0);
}

}  // namespace
}  // namespace tailor
