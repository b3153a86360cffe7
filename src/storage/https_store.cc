// https:// objects, read-only (storage/https_store.h).

#include "storage/https_store.h"

#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "storage/uri_encode.h"
#include "util/quote.h"
#include "util/status_macros.h"

namespace tailor {
namespace {

std::string StripQuotes(absl::string_view etag) {
  if (etag.size() >= 2 && etag.front() == '"' && etag.back() == '"') {
    etag = etag.substr(1, etag.size() - 2);
  }
  return std::string(etag);
}

// A weak validator (W/"...") cannot back If-Match on a range.
bool Weak(absl::string_view raw_etag) {
  return absl::StartsWith(raw_etag, "W/");
}

// "bytes FIRST-LAST/SIZE" -> SIZE; false if malformed or size unknown.
bool ParseContentRangeSize(absl::string_view v, uint64_t* size) {
  const size_t slash = v.rfind('/');
  if (!absl::StartsWith(v, "bytes ") || slash == absl::string_view::npos) {
    return false;
  }
  return absl::SimpleAtoi(v.substr(slash + 1), size);
}

}  // namespace

absl::Status HttpsStore::ErrorFor(const HttpResponse& r, absl::string_view op,
                                  absl::string_view subject) {
  const std::string what = absl::StrCat(op, " ", subject, ": ");
  switch (r.status) {
    case 401:
    case 403:
      return absl::PermissionDeniedError(
          absl::StrCat(what, "access denied (HTTP ", r.status, ")"));
    case 404:
    case 410:
      return absl::NotFoundError(
          absl::StrCat(what, "not found (HTTP ", r.status, ")"));
    case 412:
      return absl::FailedPreconditionError(
          absl::StrCat(what, "object changed while reading (HTTP 412)"));
    case 416:
      return absl::InvalidArgumentError(
          absl::StrCat(what, "range not satisfiable (HTTP 416)"));
    default:
      if (r.status >= 500 || r.status == 429) {
        return absl::UnavailableError(absl::StrCat(what, "HTTP ", r.status));
      }
      if (r.status / 100 == 3) {
        return absl::FailedPreconditionError(absl::StrCat(
            what, "a redirect (HTTP ", r.status,
            ") that was not followed (more than the bound, or to http://)"));
      }
      return absl::InvalidArgumentError(
          absl::StrCat(what, "refused (HTTP ", r.status, ")"));
  }
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
    if (!Weak(etag)) info.etag = StripQuotes(etag);
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
  if (!Weak(etag)) info.etag = StripQuotes(etag);
  return info;
}

absl::Status HttpsStore::ReadRange(const ObjectUri& uri,
                                   const ObjectInfo& expected, uint64_t offset,
                                   uint64_t length, char* out) {
  const std::string subject = uri.ToString();
  TAILOR_RETURN_IF_ERROR(CheckObjectRange(uri, expected, offset, length));
  if (length == 0) return absl::OkStatus();
  TAILOR_ASSIGN_OR_RETURN(std::string url, UrlFor(uri));
  HttpRequest req;
  req.url = url;
  req.follow_redirects = true;
  req.headers = AuthHeaders();
  req.headers.emplace_back(
      "Range", absl::StrCat("bytes=", offset, "-", offset + length - 1));
  if (!expected.etag.empty()) {
    req.headers.emplace_back("If-Match",
                             absl::StrCat("\"", expected.etag, "\""));
  }
  req.expected_body_bytes = length;
  req.out = out;
  TAILOR_ASSIGN_OR_RETURN(HttpResponse r, http_->Perform(req, subject));
  const bool whole = offset == 0 && length == expected.size;
  if (r.status != 206 && !(r.status == 200 && whole)) {
    if (r.status == 200) {
      return absl::FailedPreconditionError(absl::StrCat(
          "GET ", subject, ": the server ignored the Range header"));
    }
    return ErrorFor(r, "GET", subject);
  }
  uint64_t size = 0;
  if (r.status == 206 &&
      ParseContentRangeSize(r.Header("content-range"), &size) &&
      size != expected.size) {
    return absl::FailedPreconditionError(
        absl::StrCat("GET ", subject, ": object changed while reading (", size,
                     " bytes now, ", expected.size, " before)"));
  }
  const std::string etag = r.Header("etag");
  if (!expected.etag.empty() && !etag.empty() && !Weak(etag) &&
      StripQuotes(etag) != expected.etag) {
    return absl::FailedPreconditionError(
        absl::StrCat("GET ", subject, ": object changed while reading (ETag ",
                     Quote(StripQuotes(etag), 80), ", expected ",
                     Quote(expected.etag, 80), ")"));
  }
  return absl::OkStatus();
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
