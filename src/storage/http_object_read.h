#ifndef TAILOR_STORAGE_HTTP_OBJECT_READ_H_
#define TAILOR_STORAGE_HTTP_OBJECT_READ_H_

// What the stores over HttpClient (https://, hf://, s3://) share when they
// read an object: the ETag's form, the status -> ObjectStore error mapping
// and the ranged GET with its checks. Torch-free (tailor_remote).

#include <cstdint>
#include <functional>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "storage/http_client.h"
#include "storage/object_store.h"

namespace tailor {

// An ETag header's value without its surrounding double quotes ("\"abc\""
// -> "abc"); anything else as it is.
std::string UnquoteEtag(absl::string_view etag);

// A weak validator (W/"..."): it cannot back If-Match on a range.
bool IsWeakEtag(absl::string_view raw_etag);

// "bytes FIRST-LAST/SIZE" -> SIZE; false if malformed or the size unknown
// ("*").
bool ParseContentRangeSize(absl::string_view value, uint64_t* size);

// The ObjectStore error for a non-2xx `status` of `op` on `subject`, as
// "<op> <subject>: <reason> (<detail>)": 401/403 PERMISSION_DENIED "access
// denied" (`denied_hint` appended to the detail), 404 NOT_FOUND "not
// found", 412 FAILED_PRECONDITION "object changed while reading", 416
// INVALID_ARGUMENT "range not satisfiable", 5xx and 429 UNAVAILABLE
// ("<op> <subject>: <detail>"), anything else INVALID_ARGUMENT "refused".
// `detail` is what the store says of the response ("HTTP 404", S3 adds its
// error code). A store's own cases (redirects, 410) come before.
absl::Status HttpStatusError(long status, absl::string_view op,
                             absl::string_view subject,
                             absl::string_view detail,
                             absl::string_view denied_hint = "");

// Performs a request (a store's signing or headers around HttpClient).
using HttpSend = std::function<absl::StatusOr<HttpResponse>(HttpRequest)>;
// Maps a non-2xx response of `op` on `subject` (a store's ErrorFor).
using HttpErrorFor = absl::Status (*)(const HttpResponse& response,
                                      absl::string_view op,
                                      absl::string_view subject);

// ObjectStore::ReadRange over HTTP: bytes [offset, offset + length) of
// `uri`, whose Stat said `expected`, into `out`. The range is checked first
// (CheckObjectRange; nothing is sent for length 0). Then one GET, `send`,
// which completes the request with the store's URL, headers and signing:
// it comes with Range and, when `expected` has an ETag, If-Match, and its
// body must be exactly `length` bytes (the transport retries a short one),
// written straight to `out`. The response must be a 206, or a 200 when the
// whole object was asked for (a 200 otherwise: FAILED_PRECONDITION "the
// server ignored the Range header"), of an object of expected.size bytes
// (its Content-Range) with expected.etag (a strong ETag in the response; a
// weak or absent one is not compared): FAILED_PRECONDITION "object changed
// while reading" otherwise. Any other status is `error_for`'s "GET" error;
// `send`'s own errors are returned as they are.
absl::Status ReadRangeOverHttp(const ObjectUri& uri, const ObjectInfo& expected,
                               uint64_t offset, uint64_t length, char* out,
                               const HttpSend& send, HttpErrorFor error_for);

}  // namespace tailor

#endif  // TAILOR_STORAGE_HTTP_OBJECT_READ_H_
