#ifndef TAILOR_STORAGE_READ_CACHE_H_
#define TAILOR_STORAGE_READ_CACHE_H_

// A local, content-addressed cache of remote objects (issue #16 point 7):
// `--cache-dir`, capped at `--cache-bytes`. An entry is keyed by the
// canonical URI, the ETag and the size (an object whose ETag changed is a
// different entry), so re-running against the same base transfers nothing.
//
// Layout under the cache directory:
//   entries/<sha256 of key>   complete objects, verified by size
//   tmp/<key>.<pid>.<n>       downloads in progress (flock'ed by their writer)
//   locks/<key>               one downloader per key at a time (flock)
// Safety, also across processes sharing the directory: an entry appears only
// by rename(2) after its bytes were fully written and fsync'ed, so a
// partially filled entry is never served and a crash leaves only a tmp file
// (removed by the next process that finds it unlocked). Readers hold a
// shared flock on the entry; eviction (least recently used first, by mtime,
// touched on every hit) removes only entries it can lock exclusively, so an
// entry in use is never evicted. Torch-free; thread-safe.

#include <cstdint>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "io/byte_source.h"
#include "storage/object_store.h"

namespace tailor {

class ReadCache : public std::enable_shared_from_this<ReadCache> {
 public:
  // Creates `dir` (and its subdirectories) if missing. `max_bytes` > 0.
  static absl::StatusOr<std::shared_ptr<ReadCache>> Open(const std::string& dir,
                                                         uint64_t max_bytes);

  // The object `uri` of `store`, as Stat returned `info`, read from its
  // entry: a hit if a complete entry of that (uri, etag, size) exists,
  // otherwise the object is downloaded into one first (a miss; counted in
  // GlobalRemoteStats().cache_miss_bytes). Bytes read from the returned
  // source count as cache_hit_bytes. An object with no ETag or larger than
  // the cap is not cached: the result reads the store directly. A miss on
  // an object over 1 MiB is downloaded only at the first read past the
  // first 1 MiB of bytes read (those go to the store as ranged reads), so
  // reading a header only (`tailorctl inspect`) never fetches the whole
  // object.
  absl::StatusOr<std::unique_ptr<ByteSource>> OpenObject(
      std::shared_ptr<ObjectStore> store, const ObjectUri& uri,
      const ObjectInfo& info);

  // Evicts unused entries, oldest first, until the entries total at most
  // max_bytes (best effort). Also run after every miss.
  void Trim();

  const std::string& dir() const { return dir_; }
  uint64_t max_bytes() const { return max_bytes_; }

 private:
  ReadCache(std::string dir, uint64_t max_bytes)
      : dir_(std::move(dir)), max_bytes_(max_bytes) {}
  // The miss path: downloads the entry (one downloader per key) and opens
  // it, or reads the store directly if it was evicted at once.
  absl::StatusOr<std::unique_ptr<ByteSource>> Fill(
      std::shared_ptr<ObjectStore> store, const ObjectUri& uri,
      const ObjectInfo& info);
  absl::Status Download(ObjectStore& store, const ObjectUri& uri,
                        const ObjectInfo& info, const std::string& key);

  const std::string dir_;
  const uint64_t max_bytes_;
};

// The entry name of (uri, etag, size): hex SHA-256 of the three, NUL-joined.
std::string ReadCacheKey(const ObjectUri& uri, const ObjectInfo& info);

}  // namespace tailor

#endif  // TAILOR_STORAGE_READ_CACHE_H_
