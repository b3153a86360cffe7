// Reading objects over HTTP (storage/http_object_read.h).

#include "storage/http_object_read.h"

#include <utility>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "util/quote.h"
#include "util/status_macros.h"

namespace tailor {

std::string UnquoteEtag(absl::string_view etag) {
  if (etag.size() >= 2 && etag.front() == '"' && etag.back() == '"') {
    etag = etag.substr(1, etag.size() - 2);
  }
  return std::string(etag);
}

bool IsWeakEtag(absl::string_view raw_etag) {
  return absl::StartsWith(raw_etag, "W/");
}

bool ParseContentRangeSize(absl::string_view value, uint64_t* size) {
  const size_t slash = value.rfind('/');
  if (!absl::StartsWith(value, "bytes ") || slash == absl::string_view::npos) {
    return false;
  }
  return absl::SimpleAtoi(value.substr(slash + 1), size);
}

absl::Status HttpStatusError(long status, absl::string_view op,
                             absl::string_view subject,
                             absl::string_view detail,
                             absl::string_view denied_hint) {
  const std::string what = absl::StrCat(op, " ", subject, ": ");
  switch (status) {
    case 401:
    case 403:
      return absl::PermissionDeniedError(
          absl::StrCat(what, "access denied (", detail, denied_hint, ")"));
    case 404:
      return absl::NotFoundError(
          absl::StrCat(what, "not found (", detail, ")"));
    case 412:
      return absl::FailedPreconditionError(
          absl::StrCat(what, "object changed while reading (", detail, ")"));
    case 416:
      return absl::InvalidArgumentError(
          absl::StrCat(what, "range not satisfiable (", detail, ")"));
    default:
      if (status >= 500 || status == 429) {
        return absl::UnavailableError(absl::StrCat(what, detail));
      }
      return absl::InvalidArgumentError(
          absl::StrCat(what, "refused (", detail, ")"));
  }
}

absl::Status ReadRangeOverHttp(const ObjectUri& uri, const ObjectInfo& expected,
                               uint64_t offset, uint64_t length, char* out,
                               const HttpSend& send, HttpErrorFor error_for) {
  TAILOR_RETURN_IF_ERROR(CheckObjectRange(uri, expected, offset, length));
  if (length == 0) return absl::OkStatus();
  const std::string subject = uri.ToString();
  HttpRequest request;
  request.headers.emplace_back(
      "Range", absl::StrCat("bytes=", offset, "-", offset + length - 1));
  if (!expected.etag.empty()) {
    request.headers.emplace_back("If-Match",
                                 absl::StrCat("\"", expected.etag, "\""));
  }
  request.expected_body_bytes = length;
  request.out = out;
  TAILOR_ASSIGN_OR_RETURN(HttpResponse r, send(std::move(request)));
  const bool whole = offset == 0 && length == expected.size;
  if (r.status != 206 && !(r.status == 200 && whole)) {
    if (r.status == 200) {
      return absl::FailedPreconditionError(absl::StrCat(
          "GET ", subject, ": the server ignored the Range header"));
    }
    return error_for(r, "GET", subject);
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
  if (!expected.etag.empty() && !etag.empty() && !IsWeakEtag(etag) &&
      UnquoteEtag(etag) != expected.etag) {
    return absl::FailedPreconditionError(
        absl::StrCat("GET ", subject, ": object changed while reading (ETag ",
                     Quote(UnquoteEtag(etag), 80), ", expected ",
                     Quote(expected.etag, 80), ")"));
  }
  return absl::OkStatus();
}

}  // namespace tailor
