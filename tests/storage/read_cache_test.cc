// The read cache (storage/read_cache.h, issue #16 point 7) over the
// in-memory store.

#include "storage/read_cache.h"

#include <sys/stat.h>
#include <unistd.h>

#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "gtest/gtest.h"
#include "storage/remote_stats.h"
#include "testing/memory_object_store.h"
#include "testing/temp_dir.h"
#include "util/file_util.h"

namespace tailor {
namespace {

using testing::MemoryObjectStore;
using testing::TempDir;

class ReadCacheTest : public ::testing::Test {
 protected:
  std::unique_ptr<ByteSource> Open(ReadCache& cache, const std::string& uri) {
    const ObjectUri u = ParseObjectUri(uri).value();
    absl::StatusOr<ObjectInfo> info = store_->Stat(u);
    EXPECT_TRUE(info.ok()) << info.status();
    absl::StatusOr<std::unique_ptr<ByteSource>> source =
        cache.OpenObject(store_, u, *info);
    EXPECT_TRUE(source.ok()) << source.status();
    return source.ok() ? *std::move(source) : nullptr;
  }
  std::string ReadAll(const ByteSource& s) {
    std::string out(s.size(), '\0');
    EXPECT_TRUE(s.ReadAt(0, out.size(), out.data()).ok());
    return out;
  }
  int Entries() {
    return static_cast<int>(
        ListDirectory(JoinPath(tmp_.path(), "cache/entries"))->size());
  }

  std::shared_ptr<MemoryObjectStore> store_ =
      std::make_shared<MemoryObjectStore>();
  TempDir tmp_;
};

TEST_F(ReadCacheTest, SecondOpenTransfersNothing) {
  const std::string bytes(3 << 20, 'q');
  store_->Put("s3://bkt/base/model.safetensors", bytes);
  auto cache = ReadCache::Open(tmp_.Join("cache"), 64 << 20).value();
  const uint64_t miss0 = GlobalRemoteStats().cache_miss_bytes;
  const uint64_t hit0 = GlobalRemoteStats().cache_hit_bytes;
  EXPECT_EQ(ReadAll(*Open(*cache, "s3://bkt/base/model.safetensors")), bytes);
  EXPECT_EQ(store_->bytes_served(), bytes.size());
  EXPECT_EQ(GlobalRemoteStats().cache_miss_bytes - miss0, bytes.size());
  store_->ResetCounters();
  // Another cache object on the same directory (another process, as far as
  // the cache can tell).
  auto again = ReadCache::Open(tmp_.Join("cache"), 64 << 20).value();
  EXPECT_EQ(ReadAll(*Open(*again, "s3://bkt/base/model.safetensors")), bytes);
  EXPECT_EQ(store_->bytes_served(), 0u);
  EXPECT_GE(GlobalRemoteStats().cache_hit_bytes - hit0, bytes.size());
}

TEST_F(ReadCacheTest, AHeaderOnlyReadDoesNotDownloadTheObject) {
  // 8 MiB: what `tailorctl inspect --cache-dir` reads of it is its header.
  std::string bytes(8 << 20, 'w');
  for (size_t i = 0; i < bytes.size(); i += 4096) bytes[i] = 'a' + i % 26;
  store_->Put("s3://bkt/big.safetensors", bytes);
  auto cache = ReadCache::Open(tmp_.Join("cache"), 64 << 20).value();
  {
    auto source = Open(*cache, "s3://bkt/big.safetensors");
    ASSERT_NE(source, nullptr);
    std::string head(8, '\0'), header(4000, '\0');
    ASSERT_TRUE(source->ReadAt(0, 8, head.data()).ok());
    ASSERT_TRUE(source->ReadAt(8, header.size(), header.data()).ok());
    EXPECT_EQ(head, bytes.substr(0, 8));
    EXPECT_EQ(header, bytes.substr(8, header.size()));
    // Ranged: far below the object's size, and nothing cached.
    EXPECT_LE(store_->bytes_served(), 256u << 10);
    EXPECT_EQ(Entries(), 0);
    // Reading on (a fuse reads the tensors) fills the entry once.
    std::string tensor(2 << 20, '\0');
    ASSERT_TRUE(source->ReadAt(5 << 20, tensor.size(), tensor.data()).ok());
    EXPECT_EQ(tensor, bytes.substr(5 << 20, tensor.size()));
    EXPECT_EQ(Entries(), 1);
    const uint64_t served = store_->bytes_served();
    EXPECT_LE(served, bytes.size() + (256u << 10));
    EXPECT_EQ(ReadAll(*source), bytes);
    EXPECT_EQ(store_->bytes_served(), served);
  }
  store_->ResetCounters();
  EXPECT_EQ(ReadAll(*Open(*cache, "s3://bkt/big.safetensors")), bytes);
  EXPECT_EQ(store_->bytes_served(), 0u);
}

TEST_F(ReadCacheTest, AChangedEtagIsADifferentEntry) {
  store_->Put("s3://bkt/m", "version one");
  auto cache = ReadCache::Open(tmp_.Join("cache"), 1 << 20).value();
  EXPECT_EQ(ReadAll(*Open(*cache, "s3://bkt/m")), "version one");
  store_->Put("s3://bkt/m", "version two");  // same size, new ETag
  store_->ResetCounters();
  EXPECT_EQ(ReadAll(*Open(*cache, "s3://bkt/m")), "version two");
  EXPECT_EQ(store_->bytes_served(), 11u);
  EXPECT_EQ(Entries(), 2);
}

TEST_F(ReadCacheTest, AFailedDownloadLeavesNoEntry) {
  store_->Put("s3://bkt/m", std::string(20 << 20, 'z'));  // three chunks
  store_->ChangeAfterReads("s3://bkt/m", 0);  // changes after the first
  auto cache = ReadCache::Open(tmp_.Join("cache"), 64 << 20).value();
  const ObjectUri u = ParseObjectUri("s3://bkt/m").value();
  const ObjectInfo info = store_->Stat(u).value();
  absl::StatusOr<std::unique_ptr<ByteSource>> s =
      cache->OpenObject(store_, u, info);
  // Downloaded at the first read past its first MiB (a header read
  // downloads nothing): that read fails.
  ASSERT_TRUE(s.ok()) << s.status();
  std::string out(info.size, '\0');
  const absl::Status read = (*s)->ReadAt(0, out.size(), out.data());
  EXPECT_EQ(read.code(), absl::StatusCode::kFailedPrecondition) << read;
  EXPECT_EQ(Entries(), 0);
  EXPECT_TRUE(ListDirectory(JoinPath(tmp_.path(), "cache/tmp"))->empty());
}

TEST_F(ReadCacheTest, EvictsLeastRecentlyUsedButNeverAnEntryInUse) {
  auto cache = ReadCache::Open(tmp_.Join("cache"), 2500).value();
  store_->Put("s3://bkt/a", std::string(1000, 'a'));
  store_->Put("s3://bkt/b", std::string(1000, 'b'));
  store_->Put("s3://bkt/c", std::string(1000, 'c'));
  std::unique_ptr<ByteSource> a = Open(*cache, "s3://bkt/a");  // held
  ::usleep(20000);
  Open(*cache, "s3://bkt/b").reset();
  ::usleep(20000);
  std::unique_ptr<ByteSource> c = Open(*cache, "s3://bkt/c");
  // 3000 > 2500: the oldest entry, a, is in use, so b goes.
  EXPECT_EQ(Entries(), 2);
  EXPECT_EQ(ReadAll(*a), std::string(1000, 'a'));
  store_->ResetCounters();
  Open(*cache, "s3://bkt/a");
  EXPECT_EQ(store_->bytes_served(), 0u) << "a was evicted while in use";
  Open(*cache, "s3://bkt/b");
  EXPECT_EQ(store_->bytes_served(), 1000u) << "b should have been evicted";
  // a and c are in use and b is new: over the cap, but nothing in use goes.
  EXPECT_EQ(Entries(), 3);
  c.reset();
  Open(*cache, "s3://bkt/a");  // a is now the most recently used
  a.reset();
  store_->Put("s3://bkt/d", std::string(1000, 'd'));
  Open(*cache, "s3://bkt/d");
  // c (the least recently used, now free) and then b went; a and d stay.
  EXPECT_EQ(Entries(), 2);
  store_->ResetCounters();
  Open(*cache, "s3://bkt/a");
  Open(*cache, "s3://bkt/d");
  EXPECT_EQ(store_->bytes_served(), 0u);
}

TEST_F(ReadCacheTest, ObjectsWithoutEtagOrLargerThanTheCapBypassIt) {
  auto cache = ReadCache::Open(tmp_.Join("cache"), 100).value();
  store_->Put("s3://bkt/big", std::string(1000, 'x'));
  EXPECT_EQ(ReadAll(*Open(*cache, "s3://bkt/big")), std::string(1000, 'x'));
  EXPECT_EQ(Entries(), 0);
  EXPECT_FALSE(ReadCache::Open(tmp_.Join("cache2"), 0).ok());
}

TEST_F(ReadCacheTest, ConcurrentReadersShareOneDownload) {
  const std::string bytes(2 << 20, 'k');
  store_->Put("s3://bkt/shared", bytes);
  auto cache = ReadCache::Open(tmp_.Join("cache"), 64 << 20).value();
  std::vector<std::thread> threads;
  std::atomic<int> good{0};
  for (int i = 0; i < 4; ++i) {
    threads.emplace_back([&] {
      auto other = ReadCache::Open(tmp_.Join("cache"), 64 << 20).value();
      const ObjectUri u = ParseObjectUri("s3://bkt/shared").value();
      auto s = other->OpenObject(store_, u, store_->Stat(u).value());
      if (!s.ok()) return;
      std::string out((*s)->size(), '\0');
      if ((*s)->ReadAt(0, out.size(), out.data()).ok() && out == bytes) ++good;
    });
  }
  for (std::thread& t : threads) t.join();
  EXPECT_EQ(good.load(), 4);
  EXPECT_EQ(store_->bytes_served(), bytes.size());
  EXPECT_EQ(Entries(), 1);
}

}  // namespace
}  // namespace tailor
