#include "testing/memory_object_store.h"

#include <dirent.h>
#include <sys/stat.h>

#include <cstring>
#include <fstream>
#include <sstream>
#include <utility>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "util/status_macros.h"

namespace tailor {
namespace testing {

class MemoryObjectStore::Upload : public ObjectUpload {
 public:
  Upload(MemoryObjectStore* store, std::string uri)
      : store_(store), uri_(std::move(uri)) {}
  ~Upload() override { (void)Abort(); }

  absl::Status Append(absl::string_view bytes) override {
    if (done_) return absl::FailedPreconditionError("upload finished");
    {
      absl::MutexLock lock(&store_->mu_);
      if (store_->fail_append_ > 0 && --store_->fail_append_ == 0) {
        return store_->fail_append_status_;
      }
    }
    if (id_.empty()) {
      // As S3's CreateMultipartUpload at the first part.
      {
        absl::MutexLock lock(&store_->mu_);
        id_ = absl::StrCat("mem-upload-", store_->next_upload_id_++);
      }
      absl::Status s = Started(id_);
      if (!s.ok()) return s;
    }
    bytes_.append(bytes.data(), bytes.size());
    return absl::OkStatus();
  }
  absl::Status Commit() override {
    if (done_) return absl::FailedPreconditionError("upload finished");
    absl::MutexLock lock(&store_->mu_);
    if (store_->fail_commit_ > 0 && --store_->fail_commit_ == 0) {
      return store_->fail_commit_status_;
    }
    done_ = true;
    store_->pending_.erase(store_->pending_.find(uri_));
    store_->PutLocked(uri_, std::move(bytes_));
    return absl::OkStatus();
  }
  absl::Status Abort() override {
    if (done_) return absl::OkStatus();
    done_ = true;
    absl::MutexLock lock(&store_->mu_);
    store_->pending_.erase(store_->pending_.find(uri_));
    ++store_->aborted_;
    return absl::OkStatus();
  }

 private:
  MemoryObjectStore* const store_;
  const std::string uri_;
  std::string bytes_;
  std::string id_;
  bool done_ = false;
};

absl::Status MemoryObjectStore::AbortUpload(const ObjectUri& uri,
                                            const std::string& upload_id) {
  absl::MutexLock lock(&mu_);
  aborted_ids_.push_back(absl::StrCat(uri.ToString(), " ", upload_id));
  return absl::OkStatus();
}

std::vector<std::string> MemoryObjectStore::aborted_ids() const {
  absl::MutexLock lock(&mu_);
  return aborted_ids_;
}

void MemoryObjectStore::PutLocked(const std::string& uri, std::string bytes) {
  objects_[uri] = Object{std::move(bytes), absl::StrCat("etag-", next_etag_++)};
}

void MemoryObjectStore::Put(const std::string& uri, std::string bytes) {
  absl::MutexLock lock(&mu_);
  PutLocked(ParseObjectUri(uri).value().ToString(), std::move(bytes));
}

void MemoryObjectStore::PutTree(const std::string& dir,
                                const std::string& prefix) {
  DIR* d = ::opendir(dir.c_str());
  if (d == nullptr) return;
  while (struct dirent* e = ::readdir(d)) {
    const std::string name = e->d_name;
    if (name == "." || name == "..") continue;
    const std::string path = dir + "/" + name;
    struct stat st;
    if (::stat(path.c_str(), &st) != 0) continue;
    if (S_ISDIR(st.st_mode)) {
      PutTree(path, prefix + name + "/");
    } else if (S_ISREG(st.st_mode)) {
      std::ifstream in(path, std::ios::binary);
      std::stringstream bytes;
      bytes << in.rdbuf();
      Put(prefix + name, bytes.str());
    }
  }
  ::closedir(d);
}

bool MemoryObjectStore::Get(const std::string& uri, std::string* bytes) const {
  absl::MutexLock lock(&mu_);
  auto it = objects_.find(ParseObjectUri(uri).value().ToString());
  if (it == objects_.end()) return false;
  *bytes = it->second.bytes;
  return true;
}

bool MemoryObjectStore::Has(const std::string& uri) const {
  std::string unused;
  return Get(uri, &unused);
}

std::vector<std::string> MemoryObjectStore::Keys() const {
  absl::MutexLock lock(&mu_);
  std::vector<std::string> out;
  for (const auto& [k, v] : objects_) out.push_back(k);
  return out;
}

std::vector<std::string> MemoryObjectStore::PendingUploads() const {
  absl::MutexLock lock(&mu_);
  return std::vector<std::string>(pending_.begin(), pending_.end());
}

int MemoryObjectStore::aborted_uploads() const {
  absl::MutexLock lock(&mu_);
  return aborted_;
}

uint64_t MemoryObjectStore::bytes_served() const {
  absl::MutexLock lock(&mu_);
  return bytes_served_;
}

uint64_t MemoryObjectStore::range_reads() const {
  absl::MutexLock lock(&mu_);
  return range_reads_;
}

void MemoryObjectStore::ResetCounters() {
  absl::MutexLock lock(&mu_);
  bytes_served_ = 0;
  range_reads_ = 0;
}

void MemoryObjectStore::FailReads(const std::string& prefix,
                                  absl::Status status) {
  absl::MutexLock lock(&mu_);
  if (status.ok()) {
    fail_reads_.erase(prefix);
  } else {
    fail_reads_[prefix] = std::move(status);
  }
}

void MemoryObjectStore::ChangeAfterReads(const std::string& uri, int n) {
  absl::MutexLock lock(&mu_);
  change_uri_ = ParseObjectUri(uri).value().ToString();
  change_after_ = n;
}

void MemoryObjectStore::FailAppend(int n, absl::Status status) {
  absl::MutexLock lock(&mu_);
  fail_append_ = n;
  fail_append_status_ = std::move(status);
}

void MemoryObjectStore::FailCommit(int n, absl::Status status) {
  absl::MutexLock lock(&mu_);
  fail_commit_ = n;
  fail_commit_status_ = std::move(status);
}

absl::Status MemoryObjectStore::InjectedLocked(const std::string& uri) const {
  for (const auto& [prefix, status] : fail_reads_) {
    if (absl::StartsWith(uri, prefix)) {
      return absl::Status(status.code(),
                          absl::StrCat(uri, ": ", status.message()));
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<ObjectInfo> MemoryObjectStore::Stat(const ObjectUri& uri) {
  const std::string key = uri.ToString();
  absl::MutexLock lock(&mu_);
  if (absl::Status s = InjectedLocked(key); !s.ok()) return s;
  auto it = objects_.find(key);
  if (it == objects_.end()) {
    return absl::NotFoundError(absl::StrCat(key, ": no such object"));
  }
  return ObjectInfo{it->second.bytes.size(), it->second.etag};
}

absl::Status MemoryObjectStore::ReadRange(const ObjectUri& uri,
                                          const ObjectInfo& expected,
                                          uint64_t offset, uint64_t length,
                                          char* out) {
  const std::string key = uri.ToString();
  absl::MutexLock lock(&mu_);
  if (absl::Status s = InjectedLocked(key); !s.ok()) return s;
  auto it = objects_.find(key);
  if (it == objects_.end()) {
    return absl::NotFoundError(absl::StrCat(key, ": no such object"));
  }
  if (it->second.etag != expected.etag) {
    return absl::FailedPreconditionError(
        absl::StrCat(key, ": object changed while reading"));
  }
  TAILOR_RETURN_IF_ERROR(CheckObjectRange(uri, expected, offset, length));
  std::memcpy(out, it->second.bytes.data() + offset, length);
  bytes_served_ += length;
  ++range_reads_;
  if (change_after_ >= 0 && key == change_uri_ && change_after_-- == 0) {
    PutLocked(key, it->second.bytes);  // same bytes, new ETag
  }
  return absl::OkStatus();
}

absl::StatusOr<std::vector<ObjectUri>> MemoryObjectStore::List(
    const ObjectUri& prefix) {
  const std::string p = prefix.ToString();
  absl::MutexLock lock(&mu_);
  if (absl::Status s = InjectedLocked(p); !s.ok()) return s;
  std::vector<ObjectUri> out;
  for (auto it = objects_.lower_bound(p);
       it != objects_.end() && absl::StartsWith(it->first, p); ++it) {
    out.push_back(ParseObjectUri(it->first).value());
  }
  return out;
}

absl::StatusOr<std::unique_ptr<ObjectUpload>> MemoryObjectStore::BeginUpload(
    const ObjectUri& uri) {
  const std::string key = uri.ToString();
  absl::MutexLock lock(&mu_);
  pending_.insert(key);
  return std::unique_ptr<ObjectUpload>(new Upload(this, key));
}

absl::Status MemoryObjectStore::Delete(const ObjectUri& uri) {
  absl::MutexLock lock(&mu_);
  objects_.erase(uri.ToString());
  return absl::OkStatus();
}

absl::StatusOr<std::shared_ptr<ObjectStore>> MemoryStoreProvider::StoreFor(
    const ObjectUri& uri) {
  if (uri.scheme != "s3" && uri.scheme != "https") {
    return absl::UnimplementedError(
        absl::StrCat("no store for scheme ", uri.scheme));
  }
  return std::shared_ptr<ObjectStore>(store_);
}

}  // namespace testing
}  // namespace tailor
