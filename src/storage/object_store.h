#ifndef TAILOR_STORAGE_OBJECT_STORE_H_
#define TAILOR_STORAGE_OBJECT_STORE_H_

// The remote-storage seam (issue #16): what the engine needs from an object
// store, independent of the protocol. s3:// (AWS SigV4), https:// (read-only,
// Range requests) and hf:// (a Hub-compatible endpoint) implement it in
// storage/; checkpoint readers, the read cache and the output publisher use
// only this interface, so tests can substitute an in-memory store.
//
// Torch-free (part of tailor_base's storage layer).

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"

namespace tailor {

// A parsed, normalised remote location.
//   s3://bucket/key              scheme "s3",    bucket "bucket", key "key"
//   https://host[:port]/path     scheme "https", bucket "host[:port]",
//                                key "path" (no query or fragment allowed)
//   hf://org/repo[@rev]/path     scheme "hf",    bucket "org/repo",
//                                revision "rev" ("main" when absent),
//                                key "path"
// `key` is normalised: percent-decoded once, no leading '/', no empty, "." or
// ".." segments, no NUL or control bytes; a key that names a "directory"
// (a prefix) ends in '/' exactly when the URI did. Parsing refuses anything
// else with INVALID_ARGUMENT naming the rule, so that "s3://b/a/../x" and
// "s3://b/a/%2e%2e/x" can never be matched against an allowed prefix.
struct ObjectUri {
  std::string scheme;
  std::string bucket;
  std::string key;
  std::string revision;  // hf only

  // The canonical text form ("s3://bucket/key"); never carries credentials.
  std::string ToString() const;
  // This URI with `name` appended as one more key segment ('/'-joined).
  ObjectUri Child(absl::string_view name) const;
  bool operator==(const ObjectUri& o) const {
    return scheme == o.scheme && bucket == o.bucket && key == o.key &&
           revision == o.revision;
  }
};

// True for the schemes an ObjectStore serves (s3, https, hf), compared
// case-insensitively. http:// is never remote-readable (no plaintext).
bool IsRemoteUri(absl::string_view uri);

// Parses and normalises `uri` (see ObjectUri). INVALID_ARGUMENT on any
// violation; UNIMPLEMENTED for a scheme that is not remote.
absl::StatusOr<ObjectUri> ParseObjectUri(absl::string_view uri);

// What a HEAD (or the first ranged GET) says about an object.
struct ObjectInfo {
  uint64_t size = 0;
  // The store's entity tag, quotes stripped; empty when the store gave none.
  // The read cache keys on (uri, etag, size).
  std::string etag;
};

// The INVALID_ARGUMENT of ObjectStore::ReadRange for a range past
// `expected.size` ("GET uri: the range [a, b) lies past the object's N
// bytes"); OK for a range inside it.
absl::Status CheckObjectRange(const ObjectUri& uri, const ObjectInfo& expected,
                              uint64_t offset, uint64_t length);

// An object being written. Bytes become visible only at Commit(); an upload
// that is destroyed without a successful Commit() is aborted (S3:
// AbortMultipartUpload), so a failed, cancelled or drained job leaves no
// visible object. Not thread-safe: one writer.
class ObjectUpload {
 public:
  virtual ~ObjectUpload() = default;
  // Appends bytes in order. Implementations buffer into parts (S3: >= 5 MiB
  // except the last) and may send them before Commit().
  virtual absl::Status Append(absl::string_view bytes) = 0;
  // Finishes the upload; the object is then visible, atomically, with
  // exactly the appended bytes.
  virtual absl::Status Commit() = 0;
  // Abandons the upload; idempotent; best effort (errors are logged by the
  // caller, never fatal).
  virtual absl::Status Abort() = 0;

  // Called with the store's id of this upload once it exists on the server
  // (S3: after CreateMultipartUpload, before the first part is sent), so
  // the caller can record it durably and abort it after a crash
  // (ObjectStore::AbortUpload). Not called for an upload that is one PUT at
  // Commit(). An error from it fails the upload (which is then aborted).
  using StartedCallback = std::function<absl::Status(const std::string& id)>;
  void set_on_started(StartedCallback f) { on_started_ = std::move(f); }

 protected:
  absl::Status Started(const std::string& id) const {
    return on_started_ ? on_started_(id) : absl::OkStatus();
  }

 private:
  StartedCallback on_started_;
};

// A remote object store. Thread-safe: every method may be called
// concurrently (concurrent jobs share one store per scheme/endpoint).
//
// Errors, the same for every implementation (issue #16 point 6):
//   403 / signature refused -> PERMISSION_DENIED naming the URI
//   404 / no such key       -> NOT_FOUND naming the URI
//   throttling, 5xx, timeouts, connection resets after bounded retries
//                           -> UNAVAILABLE
//   a short or inconsistent body -> DATA_LOSS (after retries)
//   a write to a read-only scheme (https, hf) -> PERMISSION_DENIED
// Messages name the URI (ObjectUri::ToString) and never contain secrets
// (keys, tokens, Authorization or signature values).
class ObjectStore {
 public:
  virtual ~ObjectStore() = default;

  virtual absl::StatusOr<ObjectInfo> Stat(const ObjectUri& uri) = 0;

  // Reads exactly `length` bytes at `offset` into `out` (a ranged GET).
  // `expected` is what Stat() returned: the read is conditional on its etag
  // (If-Match where supported) and a changed object is FAILED_PRECONDITION
  // ("object changed while reading"), never a silent mix of two versions.
  // A range past expected.size is INVALID_ARGUMENT.
  virtual absl::Status ReadRange(const ObjectUri& uri,
                                 const ObjectInfo& expected, uint64_t offset,
                                 uint64_t length, char* out) = 0;

  // The keys directly or indirectly under `prefix` (a URI whose key is empty
  // or ends in '/'), sorted, as child URIs. UNIMPLEMENTED for stores that
  // cannot list (https); bounded (INVALID_ARGUMENT beyond 100000 keys).
  virtual absl::StatusOr<std::vector<ObjectUri>> List(
      const ObjectUri& prefix) = 0;

  // Starts writing `uri` (replacing any existing object at Commit()).
  virtual absl::StatusOr<std::unique_ptr<ObjectUpload>> BeginUpload(
      const ObjectUri& uri) = 0;

  // Removes `uri`; NOT_FOUND is reported as OK (idempotent).
  virtual absl::Status Delete(const ObjectUri& uri) = 0;

  // Abandons the upload of `uri` whose id ObjectUpload's started callback
  // reported, possibly in an earlier process (S3: AbortMultipartUpload; an
  // upload that no longer exists is OK). UNIMPLEMENTED for stores without
  // such uploads.
  virtual absl::Status AbortUpload(const ObjectUri& uri,
                                   const std::string& upload_id) {
    (void)upload_id;
    return absl::UnimplementedError(
        absl::StrCat("abort upload ", uri.ToString(),
                     ": this store has no pending uploads"));
  }
};

// Hands out the store for a URI's scheme and endpoint. The binaries' main()
// creates one (storage/remote_store_provider.h: libcurl-backed s3, https,
// hf) and passes it down with the UriResolver; tests pass an in-memory one.
// Thread-safe.
class ObjectStoreProvider {
 public:
  virtual ~ObjectStoreProvider() = default;
  // UNIMPLEMENTED (naming the scheme) if this provider serves no such
  // scheme.
  virtual absl::StatusOr<std::shared_ptr<ObjectStore>> StoreFor(
      const ObjectUri& uri) = 0;
};

}  // namespace tailor

#endif  // TAILOR_STORAGE_OBJECT_STORE_H_
