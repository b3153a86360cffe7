#ifndef TAILOR_TESTS_TESTING_MEMORY_OBJECT_STORE_H_
#define TAILOR_TESTS_TESTING_MEMORY_OBJECT_STORE_H_

// An in-memory ObjectStore (storage/object_store.h) for tests: a
// thread-safe map of objects with ETags, counting the bytes it serves, with
// injectable failures, uploads visible only at Commit() and a list of the
// uploads still pending. Follows the store error contract (NOT_FOUND,
// PERMISSION_DENIED, UNAVAILABLE, FAILED_PRECONDITION for a changed ETag).
// Torch-free.

#include <cstdint>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "storage/object_store.h"

namespace tailor {
namespace testing {

class MemoryObjectStore : public ObjectStore {
 public:
  // Puts an object (its ETag changes with every Put).
  void Put(const std::string& uri, std::string bytes);
  // Puts every regular file under local directory `dir` at `prefix` (a URI
  // ending in '/') + its relative path.
  void PutTree(const std::string& dir, const std::string& prefix);
  // The bytes of `uri`, or nullopt-like false when absent.
  bool Get(const std::string& uri, std::string* bytes) const;
  bool Has(const std::string& uri) const;
  // Canonical URIs of every visible object, sorted.
  std::vector<std::string> Keys() const;
  // Uploads begun and neither committed nor aborted.
  std::vector<std::string> PendingUploads() const;
  int aborted_uploads() const;
  // "<uri> <id>" of every AbortUpload call (an upload begun by another
  // process: ids are "mem-upload-<n>", started at the first Append).
  std::vector<std::string> aborted_ids() const;

  // Bytes returned by ReadRange (all objects), and ReadRange calls.
  uint64_t bytes_served() const;
  uint64_t range_reads() const;
  void ResetCounters();

  // Failure injection. Every Stat/ReadRange/List of a URI whose text starts
  // with `prefix` fails with `status` (OK removes it).
  void FailReads(const std::string& prefix, absl::Status status);
  // After `n` more successful ReadRange calls, the object at `uri` is
  // replaced (new ETag), so the next read sees a changed object.
  void ChangeAfterReads(const std::string& uri, int n);
  // The `n`-th Append from now (counting from 1) fails with `status`.
  void FailAppend(int n, absl::Status status);
  // The `n`-th Commit from now fails with `status`.
  void FailCommit(int n, absl::Status status);

  // ObjectStore.
  absl::StatusOr<ObjectInfo> Stat(const ObjectUri& uri) override;
  absl::Status ReadRange(const ObjectUri& uri, const ObjectInfo& expected,
                         uint64_t offset, uint64_t length, char* out) override;
  absl::StatusOr<std::vector<ObjectUri>> List(const ObjectUri& prefix) override;
  absl::StatusOr<std::unique_ptr<ObjectUpload>> BeginUpload(
      const ObjectUri& uri) override;
  absl::Status Delete(const ObjectUri& uri) override;
  absl::Status AbortUpload(const ObjectUri& uri,
                           const std::string& upload_id) override;

 private:
  class Upload;
  struct Object {
    std::string bytes;
    std::string etag;
  };
  absl::Status InjectedLocked(const std::string& uri) const
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void PutLocked(const std::string& uri, std::string bytes)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  mutable absl::Mutex mu_;
  std::map<std::string, Object> objects_ ABSL_GUARDED_BY(mu_);
  uint64_t next_etag_ ABSL_GUARDED_BY(mu_) = 1;
  uint64_t bytes_served_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t range_reads_ ABSL_GUARDED_BY(mu_) = 0;
  std::map<std::string, absl::Status> fail_reads_ ABSL_GUARDED_BY(mu_);
  std::string change_uri_ ABSL_GUARDED_BY(mu_);
  int change_after_ ABSL_GUARDED_BY(mu_) = -1;
  int fail_append_ ABSL_GUARDED_BY(mu_) = 0;
  absl::Status fail_append_status_ ABSL_GUARDED_BY(mu_);
  int fail_commit_ ABSL_GUARDED_BY(mu_) = 0;
  absl::Status fail_commit_status_ ABSL_GUARDED_BY(mu_);
  std::multiset<std::string> pending_ ABSL_GUARDED_BY(mu_);
  int aborted_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t next_upload_id_ ABSL_GUARDED_BY(mu_) = 1;
  std::vector<std::string> aborted_ids_ ABSL_GUARDED_BY(mu_);
};

// A provider serving one store for every s3:// and https:// URI.
class MemoryStoreProvider : public ObjectStoreProvider {
 public:
  explicit MemoryStoreProvider(std::shared_ptr<MemoryObjectStore> store)
      : store_(std::move(store)) {}
  absl::StatusOr<std::shared_ptr<ObjectStore>> StoreFor(
      const ObjectUri& uri) override;

 private:
  std::shared_ptr<MemoryObjectStore> store_;
};

}  // namespace testing
}  // namespace tailor

#endif  // TAILOR_TESTS_TESTING_MEMORY_OBJECT_STORE_H_
