#include "storage/read_cache.h"

#include <dirent.h>
#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <functional>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "storage/remote_byte_source.h"
#include "storage/remote_stats.h"
#include "util/errno_status.h"
#include "util/file_util.h"
#include "util/sha256.h"
#include "util/status_macros.h"

namespace tailor {
namespace {

constexpr uint64_t kDownloadChunk = 8ull << 20;
// Bytes a miss reads straight from the store before the object is
// downloaded into the cache (LazyEntrySource): room for a safetensors
// header.
constexpr uint64_t kDirectBudget = 1ull << 20;

absl::Status Errno(absl::string_view what) { return ErrnoError(errno, what); }

// flock(2), retried on EINTR.
bool Flock(int fd, int op) {
  while (::flock(fd, op) != 0) {
    if (errno != EINTR) return false;
  }
  return true;
}

// An entry file open with a shared lock (held by the file source's
// descriptor while in use): hit bytes are counted as read.
class CachedSource : public ByteSource {
 public:
  CachedSource(std::string name, std::unique_ptr<ByteSource> file)
      : name_(std::move(name)), file_(std::move(file)) {}
  uint64_t size() const override { return file_->size(); }
  const std::string& name() const override { return name_; }
  absl::Status ReadAt(uint64_t offset, uint64_t length,
                      void* out) const override {
    TAILOR_RETURN_IF_ERROR(file_->ReadAt(offset, length, out));
    GlobalRemoteStats().cache_hit_bytes += length;
    return absl::OkStatus();
  }

 private:
  const std::string name_;
  const std::unique_ptr<ByteSource> file_;
};

// The source of entry `fd` of object `uri`, a CachedSource.
absl::StatusOr<std::unique_ptr<ByteSource>> EntrySource(const ObjectUri& uri,
                                                        ScopedFd fd) {
  TAILOR_ASSIGN_OR_RETURN(
      std::unique_ptr<ByteSource> file,
      NewFileByteSource(absl::StrCat(uri.ToString(), " (cached)"),
                        std::move(fd)));
  return std::unique_ptr<ByteSource>(
      new CachedSource(uri.ToString(), std::move(file)));
}

// A miss on an object larger than kDirectBudget: reads go straight to the
// store (ranged, RemoteByteSource) while they total at most kDirectBudget
// bytes -- a header-only reader (`tailorctl inspect`) never downloads the
// object -- and the first read beyond fills the entry (`fill`) and serves
// that read and every later one from it. Thread-safe.
class LazyEntrySource : public ByteSource {
 public:
  using Fill = std::function<absl::StatusOr<std::unique_ptr<ByteSource>>()>;
  LazyEntrySource(std::unique_ptr<ByteSource> direct, Fill fill)
      : direct_(std::move(direct)), fill_(std::move(fill)) {}
  uint64_t size() const override { return direct_->size(); }
  const std::string& name() const override { return direct_->name(); }
  absl::Status ReadAt(uint64_t offset, uint64_t length,
                      void* out) const override {
    const ByteSource* from = nullptr;
    {
      absl::MutexLock lock(&mu_);
      if (entry_ == nullptr && direct_bytes_ + length <= kDirectBudget) {
        direct_bytes_ += length;
        from = direct_.get();
      } else {
        if (entry_ == nullptr) {
          TAILOR_ASSIGN_OR_RETURN(entry_, fill_());
        }
        from = entry_.get();  // never replaced once set
      }
    }
    return from->ReadAt(offset, length, out);
  }

 private:
  const std::unique_ptr<ByteSource> direct_;
  const Fill fill_;
  mutable absl::Mutex mu_;
  mutable uint64_t direct_bytes_ ABSL_GUARDED_BY(mu_) = 0;
  mutable std::unique_ptr<ByteSource> entry_ ABSL_GUARDED_BY(mu_);
};

// Opens entry `path` with a shared lock if it is complete (`size` bytes);
// nullopt if absent or wrong (a wrong one is removed).
absl::StatusOr<std::optional<ScopedFd>> OpenEntry(const std::string& path,
                                                  uint64_t size) {
  ScopedFd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NOFOLLOW));
  if (!fd.valid()) {
    if (errno == ENOENT) return std::optional<ScopedFd>();
    return Errno(absl::StrCat("open cache entry ", path));
  }
  if (!Flock(fd.get(), LOCK_SH)) {
    return Errno(absl::StrCat("lock cache entry ", path));
  }
  struct stat st;
  struct stat now;
  if (::fstat(fd.get(), &st) != 0) {
    return Errno(absl::StrCat("stat cache entry ", path));
  }
  // Evicted between the open and the lock: not in the cache any more.
  if (::lstat(path.c_str(), &now) != 0 || now.st_ino != st.st_ino ||
      now.st_dev != st.st_dev) {
    return std::optional<ScopedFd>();
  }
  if (!S_ISREG(st.st_mode) || static_cast<uint64_t>(st.st_size) != size) {
    ::unlink(path.c_str());  // never served; re-downloaded
    return std::optional<ScopedFd>();
  }
  ::futimens(fd.get(), nullptr);  // most recently used
  return std::optional<ScopedFd>(std::move(fd));
}

struct Listed {
  std::string path;
  uint64_t size;
  int64_t mtime_ns;
};

std::vector<Listed> ListFiles(const std::string& dir) {
  std::vector<Listed> out;
  DIR* d = ::opendir(dir.c_str());
  if (d == nullptr) return out;
  while (struct dirent* e = ::readdir(d)) {
    const std::string name = e->d_name;
    if (name == "." || name == "..") continue;
    const std::string path = JoinPath(dir, name);
    struct stat st;
    if (::lstat(path.c_str(), &st) != 0 || !S_ISREG(st.st_mode)) continue;
    out.push_back({path, static_cast<uint64_t>(st.st_size),
                   static_cast<int64_t>(st.st_mtim.tv_sec) * 1000000000 +
                       st.st_mtim.tv_nsec});
  }
  ::closedir(d);
  return out;
}

// Removes `path` if no one holds a lock on it.
bool RemoveIfUnlocked(const std::string& path) {
  ScopedFd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NOFOLLOW));
  if (!fd.valid()) return false;
  if (::flock(fd.get(), LOCK_EX | LOCK_NB) != 0) return false;
  return ::unlink(path.c_str()) == 0;
}

}  // namespace

std::string ReadCacheKey(const ObjectUri& uri, const ObjectInfo& info) {
  return Sha256Hex(absl::StrCat(uri.ToString(), std::string(1, '\0'), info.etag,
                                std::string(1, '\0'), info.size));
}

absl::StatusOr<std::shared_ptr<ReadCache>> ReadCache::Open(
    const std::string& dir, uint64_t max_bytes) {
  if (dir.empty()) return absl::InvalidArgumentError("--cache-dir is empty");
  if (max_bytes == 0) {
    return absl::InvalidArgumentError("--cache-bytes must be positive");
  }
  for (const char* sub : {"entries", "tmp", "locks"}) {
    const absl::Status made = MakeDirectories(JoinPath(dir, sub));
    if (!made.ok()) {
      return absl::Status(
          made.code(), absl::StrCat("--cache-dir ", dir, ": ", made.message()));
    }
  }
  std::shared_ptr<ReadCache> cache(new ReadCache(dir, max_bytes));
  // Leftovers of crashed downloads: unlocked (their writer is gone) and
  // older than a minute (not one being created right now, before its
  // writer could lock it).
  const int64_t now_ns = absl::ToUnixNanos(absl::Now());
  for (const Listed& f : ListFiles(JoinPath(dir, "tmp"))) {
    if (now_ns - f.mtime_ns > int64_t{60} * 1000000000) {
      RemoveIfUnlocked(f.path);
    }
  }
  return cache;
}

absl::Status ReadCache::Download(ObjectStore& store, const ObjectUri& uri,
                                 const ObjectInfo& info,
                                 const std::string& key) {
  static std::atomic<uint64_t> counter{0};
  const std::string tmp =
      JoinPath(JoinPath(dir_, "tmp"),
               absl::StrCat(key, ".", ::getpid(), ".", counter.fetch_add(1)));
  ScopedFd fd(::open(tmp.c_str(),
                     O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0644));
  if (!fd.valid()) return Errno(absl::StrCat("create cache file ", tmp));
  Flock(fd.get(), LOCK_EX);  // tells Open()'s cleanup it is live
  bool renamed = false;
  struct Cleanup {
    const std::string& path;
    bool& renamed;
    ~Cleanup() {
      if (!renamed) ::unlink(path.c_str());
    }
  } cleanup{tmp, renamed};
  std::string chunk;
  for (uint64_t offset = 0; offset < info.size; offset += chunk.size()) {
    chunk.resize(std::min(kDownloadChunk, info.size - offset));
    TAILOR_RETURN_IF_ERROR(
        store.ReadRange(uri, info, offset, chunk.size(), chunk.data()));
    TAILOR_RETURN_IF_ERROR(
        PWriteFully(fd.get(), chunk.data(), chunk.size(), offset, tmp));
    GlobalRemoteStats().cache_miss_bytes += chunk.size();
  }
  TAILOR_ASSIGN_OR_RETURN(uint64_t written, RegularFileSize(fd.get(), tmp));
  if (written != info.size) {
    return absl::DataLossError(absl::StrCat(
        uri.ToString(), ": cached ", written, " bytes, expected ", info.size));
  }
  if (::fsync(fd.get()) != 0) return Errno(absl::StrCat("fsync ", tmp));
  const std::string entry = JoinPath(JoinPath(dir_, "entries"), key);
  if (::rename(tmp.c_str(), entry.c_str()) != 0) {
    return Errno(absl::StrCat("rename ", tmp, " to ", entry));
  }
  renamed = true;
  (void)FsyncDirectory(JoinPath(dir_, "entries"));
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<ByteSource>> ReadCache::OpenObject(
    std::shared_ptr<ObjectStore> store, const ObjectUri& uri,
    const ObjectInfo& info) {
  if (info.etag.empty() || info.size > max_bytes_) {
    return NewRemoteByteSource(std::move(store), uri, info);
  }
  const std::string key = ReadCacheKey(uri, info);
  const std::string entry = JoinPath(JoinPath(dir_, "entries"), key);
  TAILOR_ASSIGN_OR_RETURN(std::optional<ScopedFd> hit,
                          OpenEntry(entry, info.size));
  if (hit.has_value()) return EntrySource(uri, *std::move(hit));
  if (info.size > kDirectBudget) {
    // Downloaded only once more than a header is read (LazyEntrySource).
    std::shared_ptr<ReadCache> self = shared_from_this();
    return std::unique_ptr<ByteSource>(new LazyEntrySource(
        NewRemoteByteSource(store, uri, info),
        [self, store, uri, info] { return self->Fill(store, uri, info); }));
  }
  return Fill(std::move(store), uri, info);
}

absl::StatusOr<std::unique_ptr<ByteSource>> ReadCache::Fill(
    std::shared_ptr<ObjectStore> store, const ObjectUri& uri,
    const ObjectInfo& info) {
  const std::string key = ReadCacheKey(uri, info);
  const std::string entry = JoinPath(JoinPath(dir_, "entries"), key);
  std::optional<ScopedFd> hit;
  {
    // One downloader per key (also across processes); the others wait and
    // then find the entry.
    const std::string lock_path = JoinPath(JoinPath(dir_, "locks"), key);
    ScopedFd lock(
        ::open(lock_path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644));
    if (!lock.valid()) return Errno(absl::StrCat("open ", lock_path));
    if (!Flock(lock.get(), LOCK_EX)) return Errno("lock " + lock_path);
    TAILOR_ASSIGN_OR_RETURN(hit, OpenEntry(entry, info.size));
    if (hit.has_value()) return EntrySource(uri, *std::move(hit));
    TAILOR_RETURN_IF_ERROR(Download(*store, uri, info, key));
    // Locked (in use) before trimming, so the trim cannot take it.
    TAILOR_ASSIGN_OR_RETURN(hit, OpenEntry(entry, info.size));
  }
  Trim();
  if (hit.has_value()) return EntrySource(uri, *std::move(hit));
  // Evicted by another process between the rename and the open: read the
  // store directly this time.
  return NewRemoteByteSource(std::move(store), uri, info);
}

void ReadCache::Trim() {
  std::vector<Listed> entries = ListFiles(JoinPath(dir_, "entries"));
  uint64_t total = 0;
  for (const Listed& e : entries) total += e.size;
  if (total <= max_bytes_) return;
  std::sort(
      entries.begin(), entries.end(),
      [](const Listed& a, const Listed& b) { return a.mtime_ns < b.mtime_ns; });
  for (const Listed& e : entries) {
    if (total <= max_bytes_) break;
    if (RemoveIfUnlocked(e.path)) total -= e.size;
  }
}

}  // namespace tailor
