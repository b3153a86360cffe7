// Checkpoints in object storage (issue #16 points 2, 8, 9): the same
// checkpoint read from the in-memory store and from local disk.

#include <ATen/ATen.h>
#include <gtest/gtest.h>
#include <sys/stat.h>

#include "absl/strings/match.h"
#include "io/checkpoint.h"
#include "io/fingerprint.h"
#include "io/open_checkpoint.h"
#include "testing/memory_object_store.h"
#include "testing/test_util.h"

namespace tailor {
namespace {

using ::tailor::testing::BitEqual;
using ::tailor::testing::MemoryObjectStore;
using ::tailor::testing::MemoryStoreProvider;
using ::tailor::testing::RawTensor;
using ::tailor::testing::SerializeSafetensors;
using ::tailor::testing::TempDir;
using ::tailor::testing::ToRaw;
using ::tailor::testing::WriteFileOrDie;
using ::tailor::testing::WriteShardedCheckpoint;

class RemoteCheckpointTest : public ::testing::Test {
 protected:
  RemoteCheckpointTest() {
    local_ = tmp_.Join("base");
    ::mkdir(local_.c_str(), 0755);
    w1_ = at::randn({4, 3});
    w2_ = at::randn({5});
    WriteShardedCheckpoint(
        local_, {{ToRaw("a.weight", w1_)}, {ToRaw("b.weight", w2_)}});
    store_->PutTree(local_, "s3://bkt/models/base/");
  }
  UriResolver Resolver(std::shared_ptr<ReadCache> cache = nullptr) {
    UriResolver::Remote remote;
    remote.provider = std::make_shared<MemoryStoreProvider>(store_);
    remote.cache = std::move(cache);
    return UriResolver::Create({tmp_.path(), "s3://bkt/models/"}, {}, remote)
        .value();
  }

  TempDir tmp_;
  std::string local_;
  at::Tensor w1_, w2_;
  std::shared_ptr<MemoryObjectStore> store_ =
      std::make_shared<MemoryObjectStore>();
};

TEST_F(RemoteCheckpointTest, ShardedThroughItsIndex) {
  UriResolver resolver = Resolver();
  for (const char* uri :
       {"s3://bkt/models/base", "s3://bkt/models/base/",
        "s3://bkt/models/base/model.safetensors.index.json"}) {
    auto ckpt = OpenCheckpointUri(uri, resolver);
    ASSERT_TRUE(ckpt.ok()) << uri << ": " << ckpt.status();
    EXPECT_TRUE((*ckpt)->sharded());
    EXPECT_EQ((*ckpt)->files().size(), 2u);
    EXPECT_TRUE(BitEqual(*(*ckpt)->Read("a.weight"), w1_));
    EXPECT_TRUE(BitEqual(*(*ckpt)->Read("b.weight"), w2_));
  }
}

TEST_F(RemoteCheckpointTest, MissingShardAndEscapesAreRefused) {
  std::string index;
  ASSERT_TRUE(
      store_->Get("s3://bkt/models/base/model.safetensors.index.json", &index));
  store_->Put("s3://bkt/models/broken/model.safetensors.index.json", index);
  UriResolver resolver = Resolver();
  auto broken = OpenCheckpointUri("s3://bkt/models/broken", resolver);
  EXPECT_EQ(broken.status().code(), absl::StatusCode::kNotFound)
      << broken.status();
  // A shard name with a '/' is refused as for a local index.
  store_->Put(
      "s3://bkt/models/evil/model.safetensors.index.json",
      R"({"weight_map": {"a.weight": "../base/model-00001-of-00002.safetensors"}})");
  auto evil = OpenCheckpointUri("s3://bkt/models/evil/", resolver);
  EXPECT_EQ(evil.status().code(), absl::StatusCode::kInvalidArgument)
      << evil.status();
  // Outside the remote root.
  store_->PutTree(local_, "s3://bkt/private/base/");
  EXPECT_EQ(
      OpenCheckpointUri("s3://bkt/private/base", resolver).status().code(),
      absl::StatusCode::kPermissionDenied);
}

TEST_F(RemoteCheckpointTest, TruncatedObjectIsRefusedAsALocalFileIs) {
  std::string bytes = SerializeSafetensors({ToRaw("w", at::randn({16}))});
  bytes.resize(bytes.size() - 4);
  store_->Put("s3://bkt/models/cut/model.safetensors", bytes);
  WriteFileOrDie(tmp_.Join("cut.safetensors"), bytes);
  UriResolver resolver = Resolver();
  auto remote = OpenCheckpointUri("s3://bkt/models/cut", resolver);
  auto local = OpenCheckpointUri(tmp_.Join("cut.safetensors"), resolver);
  ASSERT_FALSE(remote.ok());
  ASSERT_FALSE(local.ok());
  EXPECT_EQ(remote.status().code(), local.status().code());
  EXPECT_TRUE(
      absl::StrContains(remote.status().message(), "s3://bkt/models/cut"))
      << remote.status();
}

TEST_F(RemoteCheckpointTest, FingerprintsAreContentBased) {
  UriResolver resolver = Resolver();
  auto remote = OpenCheckpointUri("s3://bkt/models/base", resolver).value();
  auto local = OpenCheckpointUri(local_, resolver).value();
  ASSERT_EQ(remote->files().size(), local->files().size());
  for (size_t i = 0; i < local->files().size(); ++i) {
    EXPECT_EQ(HeaderFingerprint(*remote->files()[i]).value(),
              HeaderFingerprint(*local->files()[i]).value());
    EXPECT_EQ(DataFingerprint(*remote->files()[i]).value(),
              DataFingerprint(*local->files()[i]).value());
  }
  EXPECT_EQ(remote->tensors()[0].file, local->tensors()[0].file);
}

TEST_F(RemoteCheckpointTest, ASecondOpenThroughTheCacheTransfersNothing) {
  auto cache = ReadCache::Open(tmp_.Join("cache"), 1 << 30).value();
  {
    UriResolver resolver = Resolver(cache);
    auto ckpt = OpenCheckpointUri("s3://bkt/models/base", resolver).value();
    EXPECT_TRUE(BitEqual(*ckpt->Read("a.weight"), w1_));
  }
  ASSERT_GT(store_->bytes_served(), 0u);
  store_->ResetCounters();
  UriResolver resolver = Resolver(cache);
  auto ckpt = OpenCheckpointUri("s3://bkt/models/base", resolver).value();
  EXPECT_TRUE(BitEqual(*ckpt->Read("a.weight"), w1_));
  EXPECT_TRUE(BitEqual(*ckpt->Read("b.weight"), w2_));
  // The index is a small file read whole (not cached); the shards are.
  std::string index;
  store_->Get("s3://bkt/models/base/model.safetensors.index.json", &index);
  EXPECT_EQ(store_->bytes_served(), index.size());
}

TEST_F(RemoteCheckpointTest, LoraAdapterDirectory) {
  at::Tensor w = at::randn({4, 3});
  at::Tensor a = at::randn({2, 3});
  at::Tensor b = at::randn({4, 2});
  store_->Put("s3://bkt/models/lbase/model.safetensors",
              SerializeSafetensors({ToRaw("m.proj.weight", w)}));
  store_->Put("s3://bkt/models/lora/adapter_config.json",
              R"({"peft_type": "LORA", "r": 2, "lora_alpha": 8})");
  store_->Put("s3://bkt/models/lora/adapter_model.safetensors",
              SerializeSafetensors(
                  {ToRaw("base_model.model.m.proj.lora_A.weight", a),
                   ToRaw("base_model.model.m.proj.lora_B.weight", b)}));
  UriResolver resolver = Resolver();
  auto base = OpenCheckpointUri("s3://bkt/models/lbase", resolver);
  ASSERT_TRUE(base.ok()) << base.status();
  auto lora = OpenFineTunedUri("s3://bkt/models/lora", **base, resolver);
  ASSERT_TRUE(lora.ok()) << lora.status();
  at::Tensor expected = (w.to(at::kDouble) +
                         4.0 * at::matmul(b.to(at::kDouble), a.to(at::kDouble)))
                            .to(at::kFloat);
  auto merged = (*lora)->Read("m.proj.weight");
  ASSERT_TRUE(merged.ok()) << merged.status();
  EXPECT_TRUE(at::allclose(*merged, expected, 1e-5, 1e-5));
  EXPECT_EQ(OpenCheckpointUri("s3://bkt/models/lora", resolver).status().code(),
            absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace tailor
