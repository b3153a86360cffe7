#ifndef TAILOR_STORAGE_HTTPS_STORE_H_
#define TAILOR_STORAGE_HTTPS_STORE_H_

// https:// objects, read-only (issue #16 point 1). Torch-free
// (tailor_remote).
//
//   Stat       HEAD (redirects followed, bounded) -> Content-Length, ETag;
//              a server that refuses HEAD (405/501) is asked for the
//              first byte instead (Content-Range: bytes 0-0/SIZE)
//   ReadRange  GET with Range (and If-Match for a strong ETag); a 200
//              where a part was asked for is FAILED_PRECONDITION (the
//              server ignores Range), a different ETag or object size
//              too (storage/http_object_read.h, shared with s3://)
//   List       UNIMPLEMENTED
//   BeginUpload, Delete  PERMISSION_DENIED (read-only scheme)
//
// HfStore (storage/hf_store.h) is this over a Hub's URL layout.

#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "storage/http_client.h"
#include "storage/object_store.h"

namespace tailor {

class HttpsStore : public ObjectStore {
 public:
  explicit HttpsStore(std::shared_ptr<HttpClient> http)
      : http_(std::move(http)) {}

  absl::StatusOr<ObjectInfo> Stat(const ObjectUri& uri) override;
  absl::Status ReadRange(const ObjectUri& uri, const ObjectInfo& expected,
                         uint64_t offset, uint64_t length, char* out) override;
  absl::StatusOr<std::vector<ObjectUri>> List(const ObjectUri& prefix) override;
  absl::StatusOr<std::unique_ptr<ObjectUpload>> BeginUpload(
      const ObjectUri& uri) override;
  absl::Status Delete(const ObjectUri& uri) override;

  // The URL an object is fetched from. https://host/key here.
  virtual absl::StatusOr<std::string> UrlFor(const ObjectUri& uri) const;

 protected:
  // Headers added to every request (HfStore: the bearer token, which
  // libcurl does not forward to a redirect target on another host).
  virtual std::vector<std::pair<std::string, std::string>> AuthHeaders() const {
    return {};
  }
  // Maps a non-2xx response to the ObjectStore error contract.
  static absl::Status ErrorFor(const HttpResponse& r, absl::string_view op,
                               absl::string_view subject);
  HttpClient& http() { return *http_; }

 private:
  std::shared_ptr<HttpClient> http_;
};

}  // namespace tailor

#endif  // TAILOR_STORAGE_HTTPS_STORE_H_
