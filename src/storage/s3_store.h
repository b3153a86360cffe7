#ifndef TAILOR_STORAGE_S3_STORE_H_
#define TAILOR_STORAGE_S3_STORE_H_

// s3:// over the S3 REST API, signed with AWS Signature Version 4 by
// libcurl (CURLOPT_AWS_SIGV4 "aws:amz:REGION:s3", with the request body's
// SHA-256 in x-amz-content-sha256). Torch-free (tailor_remote).
//
//   Stat       HEAD -> size, ETag
//   ReadRange  GET with Range and If-Match (412 -> FAILED_PRECONDITION),
//              checked as https:// is (storage/http_object_read.h)
//   List       ListObjectsV2, paginated (continuation tokens); keys that
//              end in '/' (folder markers) or that are no valid ObjectUri
//              key ("a//b", "..") are left out
//   BeginUpload  buffers `part_bytes`; an object that fits in one part is
//              one PUT at Commit(), a larger one a multipart upload
//              (CreateMultipartUpload at the first full part, UploadPart
//              per part, CompleteMultipartUpload at Commit(),
//              AbortMultipartUpload when destroyed uncommitted)
//   Delete     DeleteObject (404 -> OK)
//
// CompleteMultipartUpload is not retried by the transport (a POST) and never
// after a response (a 5xx is reported as UNAVAILABLE and the upload
// abandoned); it is re-sent (3 sends at most) only when no response came
// (a connection reset or timeout after sending), and a NoSuchUpload on a
// re-sent complete means an earlier one succeeded: the object is then
// checked with HEAD (its size must be the bytes appended).
//
// Addressing: path-style ({endpoint}/{bucket}/{key}) when a custom endpoint
// is configured, else virtual-hosted ({bucket}.s3.{region}.amazonaws.com),
// unless forced; a bucket with '.' is always path-style (TLS wildcards).

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "storage/aws_config.h"
#include "storage/http_client.h"
#include "storage/object_store.h"

namespace tailor {

struct S3StoreOptions {
  AwsConfig aws;
  enum class Addressing { kAuto, kPath, kVirtual };
  Addressing addressing = Addressing::kAuto;
  // Multipart part size (S3: >= 5 MiB except the last part).
  uint64_t part_bytes = 8 << 20;
  // max-keys of one ListObjectsV2 page (1..1000).
  int list_page_keys = 1000;
};

class S3Store : public ObjectStore,
                public std::enable_shared_from_this<S3Store> {
 public:
  // Create through std::make_shared (uploads keep the store alive).
  S3Store(S3StoreOptions options, std::shared_ptr<HttpClient> http);

  absl::StatusOr<ObjectInfo> Stat(const ObjectUri& uri) override;
  absl::Status ReadRange(const ObjectUri& uri, const ObjectInfo& expected,
                         uint64_t offset, uint64_t length, char* out) override;
  absl::StatusOr<std::vector<ObjectUri>> List(const ObjectUri& prefix) override;
  absl::StatusOr<std::unique_ptr<ObjectUpload>> BeginUpload(
      const ObjectUri& uri) override;
  absl::Status Delete(const ObjectUri& uri) override;
  // AbortMultipartUpload (204; 404 NoSuchUpload is OK).
  absl::Status AbortUpload(const ObjectUri& uri,
                           const std::string& upload_id) override;

  // The URL of `key` in `bucket` ("" key: the bucket), with `query`
  // (already canonical: sorted, SigV4-encoded) appended. Public for tests.
  std::string Url(absl::string_view bucket, absl::string_view key,
                  absl::string_view query) const;

  // One signed request; `body` is hashed into x-amz-content-sha256.
  // Public for the upload and tests.
  absl::StatusOr<HttpResponse> Send(HttpRequest request, absl::string_view body,
                                    absl::string_view subject);

  // Maps a non-2xx S3 response to the ObjectStore error contract.
  static absl::Status ErrorFor(const HttpResponse& response,
                               absl::string_view op, absl::string_view subject);

  const S3StoreOptions& options() const { return options_; }

 private:
  S3StoreOptions options_;
  std::shared_ptr<HttpClient> http_;
  std::string endpoint_;  // scheme://host[:port]
  bool path_style_ = true;
};

}  // namespace tailor

#endif  // TAILOR_STORAGE_S3_STORE_H_
