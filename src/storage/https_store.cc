// https:// objects, read-only (storage/https_store.h).

#include "storage/https_store.h"

#include <utility>

#include "absl/status/status.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "storage/http_object_read.h"
#include "storage/uri_encode.h"
#include "util/status_macros.h"

namespace tailor {

absl::Status HttpsStore::ErrorFor(const HttpResponse& r, absl::string_view op,
                                  absl::string_view subject) {
  if (r.status / 100 == 3) {
    return absl::FailedPreconditionError(absl::StrCat(
        op, " ", subject, ": a redirect (HTTP ", r.status,
        ") that was not followed (more than the bound, or to http://)"));
  }
  // 410 Gone: not found, as 404.
  return HttpStatusError(r.status == 410 ? 404 : r.status, op, subject,
                         absl::StrCat("HTTP ", r.status));
}

absl::StatusOr<std::string> HttpsStore::UrlFor(const ObjectUri& uri) const {
  return absl::StrCat("https://", uri.bucket, "/",
                      UriEncode(uri.key, /*keep_slash=*/true));
}

absl::StatusOr<ObjectInfo> HttpsStore::Stat(const ObjectUri& uri) {
  const std::string subject = uri.ToString();
  TAILOR_ASSIGN_OR_RETURN(std::string url, UrlFor(uri));
  HttpRequest req;
  req.method = "HEAD";
  req.url = url;
  req.follow_redirects = true;
  req.headers = AuthHeaders();
  TAILOR_ASSIGN_OR_RETURN(HttpResponse r, http_->Perform(req, subject));
  ObjectInfo info;
  if (r.status == 200 &&
      absl::SimpleAtoi(r.Header("content-length"), &info.size)) {
    const std::string etag = r.Header("etag");
    if (!IsWeakEtag(etag)) info.etag = UnquoteEtag(etag);
    return info;
  }
  if (r.status != 200 && r.status != 405 && r.status != 501) {
    return ErrorFor(r, "HEAD", subject);
  }
  // No HEAD (or no length in it): the first byte says the size.
  HttpRequest get;
  get.url = url;
  get.follow_redirects = true;
  get.headers = AuthHeaders();
  get.headers.emplace_back("Range", "bytes=0-0");
  TAILOR_ASSIGN_OR_RETURN(HttpResponse g, http_->Perform(get, subject));
  if (g.status == 416) {  // an empty object
    info.size = 0;
    return info;
  }
  if (g.status != 206) {
    if (g.status == 200) {
      return absl::FailedPreconditionError(absl::StrCat(
          "GET ", subject, ": the server ignored the Range header"));
    }
    return ErrorFor(g, "GET", subject);
  }
  if (!ParseContentRangeSize(g.Header("content-range"), &info.size)) {
    return absl::DataLossError(absl::StrCat(
        "GET ", subject, ": no object size in the Content-Range header"));
  }
  const std::string etag = g.Header("etag");
  if (!IsWeakEtag(etag)) info.etag = UnquoteEtag(etag);
  return info;
}

absl::Status HttpsStore::ReadRange(const ObjectUri& uri,
                                   const ObjectInfo& expected, uint64_t offset,
                                   uint64_t length, char* out) {
  const std::string subject = uri.ToString();
  auto send = [&](HttpRequest req) -> absl::StatusOr<HttpResponse> {
    TAILOR_ASSIGN_OR_RETURN(req.url, UrlFor(uri));
    req.follow_redirects = true;
    for (auto& header : AuthHeaders()) req.headers.push_back(std::move(header));
    return http_->Perform(req, subject);
  };
  return ReadRangeOverHttp(uri, expected, offset, length, out, send, &ErrorFor);
}

absl::StatusOr<std::vector<ObjectUri>> HttpsStore::List(
    const ObjectUri& prefix) {
  return absl::UnimplementedError(
      absl::StrCat("LIST ", prefix.ToString(),
                   ": https:// cannot be listed; name the "
                   "files (e.g. a sharded checkpoint's index) instead"));
}

absl::StatusOr<std::unique_ptr<ObjectUpload>> HttpsStore::BeginUpload(
    const ObjectUri& uri) {
  return absl::PermissionDeniedError(
      absl::StrCat("upload ", uri.ToString(), ": ", uri.scheme,
                   ":// is read-only; write outputs to s3:// or a local path"));
}

absl::Status HttpsStore::Delete(const ObjectUri& uri) {
  return absl::PermissionDeniedError(absl::StrCat(
      "DELETE ", uri.ToString(), ": ", uri.scheme, ":// is read-only"));
}

}  // namespace tailor
