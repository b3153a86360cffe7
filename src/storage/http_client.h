#ifndef TAILOR_STORAGE_HTTP_CLIENT_H_
#define TAILOR_STORAGE_HTTP_CLIENT_H_

// A small libcurl wrapper for the remote object stores (issue #16): one
// request at a time per call, any number of calls concurrently, bounded
// retries with exponential backoff and full jitter, TLS verification always
// on. Torch-free (tailor_remote).
//
// Retry contract. An attempt is retried, up to HttpClientOptions::
// max_attempts in all, when it failed transiently:
//   - a 5xx or 429 response,
//   - a connect failure, timeout, stall (no bytes for stall_timeout),
//     connection reset or a response cut short,
//   - a body whose length differs from HttpRequest::expected_body_bytes,
// and only when the request is idempotent (GET, HEAD, PUT, DELETE; set
// HttpRequest::idempotent = false for a POST such as
// CompleteMultipartUpload: it is retried only when the connection failed
// before any byte of the request could have reached the server).
// HttpResponse::attempts says how many were made, so a caller can treat
// "NoSuchUpload after a retried complete" specially.
//
// Secrets: Authorization, x-amz-security-token and the SigV4 user/password
// never reach a message; RedactSecrets() scrubs text that might carry them.

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"

namespace tailor {

struct HttpClientOptions {
  // PEM CA bundle; empty: SSL_CERT_FILE if set, else the system store.
  std::string ca_file;
  absl::Duration connect_timeout = absl::Seconds(30);
  // An attempt that transfers nothing for this long fails (retried).
  absl::Duration stall_timeout = absl::Seconds(60);
  int max_attempts = 5;
  absl::Duration initial_backoff = absl::Milliseconds(200);
  // Cap of one backoff sleep.
  absl::Duration max_backoff = absl::Seconds(20);
  // Redirects followed (3xx with Location), at most.
  int max_redirects = 5;
};

struct HttpRequest {
  std::string method = "GET";  // GET, HEAD, PUT, POST, DELETE
  std::string url;
  // "Name: value" pairs, sent as given.
  std::vector<std::pair<std::string, std::string>> headers;
  // Request body (PUT/POST); must outlive the call.
  absl::string_view body;
  // See the retry contract above.
  bool idempotent = true;
  bool follow_redirects = false;
  // For a ranged GET: the body must be exactly this long and is written
  // into `out` (which has room for it); otherwise the body is collected
  // into HttpResponse::body (up to max_body_bytes). Only a 2xx body is
  // held to the length; an error body goes to HttpResponse::body.
  std::optional<uint64_t> expected_body_bytes;
  char* out = nullptr;
  uint64_t max_body_bytes = 64 << 20;
  // AWS Signature Version 4 through libcurl (CURLOPT_AWS_SIGV4), e.g.
  // "aws:amz:us-east-1:s3", with the access key pair; empty: unsigned.
  std::string aws_sigv4;
  std::string aws_access_key;
  std::string aws_secret_key;
};

struct HttpResponse {
  long status = 0;
  // Header names lower-cased; of the last response (after redirects).
  std::map<std::string, std::string> headers;
  std::string body;         // when not written into HttpRequest::out
  uint64_t body_bytes = 0;  // bytes of the body received
  int attempts = 0;
  std::string effective_url;  // after redirects

  // The header's value, or "" if absent. `name` in lower case.
  std::string Header(absl::string_view name) const;
};

// The transport. Thread-safe; curl_global_init runs once per process.
class HttpClient {
 public:
  explicit HttpClient(HttpClientOptions options);

  // Performs `request` with retries. A response of any status is OK (the
  // caller maps statuses); errors are what left no usable response:
  // UNAVAILABLE (connect, timeout, stall, reset, 5xx/429 after the
  // retries: the last response is described), DATA_LOSS (a body whose
  // length stayed wrong), FAILED_PRECONDITION for a TLS verification
  // failure (naming the CA source), INVALID_ARGUMENT for a body larger
  // than max_body_bytes. Messages name `subject` (a URI) and never the
  // credentials.
  //
  // A 5xx/429 that persists through the retries is returned as an error,
  // not as a response; for a non-idempotent request (never retried on a
  // response) it is returned as the response, for the caller to judge.
  absl::StatusOr<HttpResponse> Perform(const HttpRequest& request,
                                       absl::string_view subject);

  const HttpClientOptions& options() const { return options_; }

 private:
  HttpClientOptions options_;
};

// `text` with the values of Authorization, Proxy-Authorization,
// x-amz-security-token and Cookie headers, SigV4 Credential=/Signature=
// fields, X-Amz-Signature/X-Amz-Credential/X-Amz-Security-Token query
// parameters and "Bearer <token>" replaced by "<redacted>".
std::string RedactSecrets(absl::string_view text);

}  // namespace tailor

#endif  // TAILOR_STORAGE_HTTP_CLIENT_H_
