// s3:// over SigV4 (storage/s3_store.h).

#include "storage/s3_store.h"

#include <algorithm>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "storage/http_object_read.h"
#include "storage/s3_upload.h"
#include "storage/uri_encode.h"
#include "storage/xml_extract.h"
#include "util/quote.h"
#include "util/sha256.h"
#include "util/status_macros.h"

namespace tailor {
namespace {

// The List bound of the ObjectStore contract.
constexpr size_t kMaxListKeys = 100000;

}  // namespace

S3Store::S3Store(S3StoreOptions options, std::shared_ptr<HttpClient> http)
    : options_(std::move(options)), http_(std::move(http)) {
  const bool custom = !options_.aws.endpoint_url.empty();
  endpoint_ = custom ? options_.aws.endpoint_url
                     : absl::StrCat("https://s3.", options_.aws.region,
                                    ".amazonaws.com");
  switch (options_.addressing) {
    case S3StoreOptions::Addressing::kAuto:
      path_style_ = custom;
      break;
    case S3StoreOptions::Addressing::kPath:
      path_style_ = true;
      break;
    case S3StoreOptions::Addressing::kVirtual:
      path_style_ = false;
      break;
  }
  options_.list_page_keys = std::clamp(options_.list_page_keys, 1, 1000);
}

std::string S3Store::Url(absl::string_view bucket, absl::string_view key,
                         absl::string_view query) const {
  std::string url;
  const std::string path = UriEncode(key, /*keep_slash=*/true);
  if (path_style_ || absl::StrContains(bucket, '.')) {
    url = absl::StrCat(endpoint_, "/", bucket, "/", path);
  } else {
    const size_t scheme_end = endpoint_.find("://") + 3;
    url = absl::StrCat(endpoint_.substr(0, scheme_end), bucket, ".",
                       endpoint_.substr(scheme_end), "/", path);
  }
  if (!query.empty()) absl::StrAppend(&url, "?", query);
  return url;
}

absl::StatusOr<HttpResponse> S3Store::Send(HttpRequest request,
                                           absl::string_view body,
                                           absl::string_view subject) {
  request.body = body;
  request.headers.emplace_back("x-amz-content-sha256", Sha256Hex(body));
  const AwsConfig& aws = options_.aws;
  if (!aws.access_key_id.empty()) {
    request.aws_sigv4 = absl::StrCat("aws:amz:", aws.region, ":s3");
    request.aws_access_key = aws.access_key_id;
    request.aws_secret_key = aws.secret_access_key;
    if (!aws.session_token.empty()) {
      request.headers.emplace_back("x-amz-security-token", aws.session_token);
    }
  }
  return http_->Perform(request, subject);
}

absl::Status S3Store::ErrorFor(const HttpResponse& r, absl::string_view op,
                               absl::string_view subject) {
  // Only the error code is quoted: S3's messages may echo request details.
  absl::StatusOr<std::string> code = XmlFirstText(r.body, "Code");
  std::string detail = absl::StrCat("HTTP ", r.status);
  if (code.ok() && !code->empty()) {
    absl::StrAppend(&detail, " ", Quote(*code, 64));
  }
  if (r.status == 301 || r.status == 307) {
    return absl::FailedPreconditionError(
        absl::StrCat(op, " ", subject, ": the bucket is served elsewhere (",
                     detail, "; check AWS_REGION / AWS_ENDPOINT_URL)"));
  }
  return HttpStatusError(r.status, op, subject, detail,
                         "; check the credentials, region and bucket policy");
}

absl::StatusOr<ObjectInfo> S3Store::Stat(const ObjectUri& uri) {
  const std::string subject = uri.ToString();
  HttpRequest req;
  req.method = "HEAD";
  req.url = Url(uri.bucket, uri.key, "");
  TAILOR_ASSIGN_OR_RETURN(HttpResponse r, Send(std::move(req), "", subject));
  if (r.status != 200) return ErrorFor(r, "HEAD", subject);
  ObjectInfo info;
  if (!absl::SimpleAtoi(r.Header("content-length"), &info.size)) {
    return absl::DataLossError(absl::StrCat(
        "HEAD ", subject, ": no valid Content-Length in the response"));
  }
  info.etag = UnquoteEtag(r.Header("etag"));
  return info;
}

absl::Status S3Store::ReadRange(const ObjectUri& uri,
                                const ObjectInfo& expected, uint64_t offset,
                                uint64_t length, char* out) {
  const std::string subject = uri.ToString();
  auto send = [&](HttpRequest req) {
    req.url = Url(uri.bucket, uri.key, "");
    return Send(std::move(req), "", subject);
  };
  return ReadRangeOverHttp(uri, expected, offset, length, out, send, &ErrorFor);
}

absl::StatusOr<std::vector<ObjectUri>> S3Store::List(const ObjectUri& prefix) {
  const std::string subject = prefix.ToString();
  if (!prefix.key.empty() && !absl::EndsWith(prefix.key, "/")) {
    return absl::InvalidArgumentError(absl::StrCat(
        "LIST ", subject, ": a prefix must be a bucket or end in '/'"));
  }
  std::vector<ObjectUri> out;
  std::string token;
  for (;;) {
    // Canonical (sorted, encoded) query: the wire form is what is signed.
    std::string query;
    if (!token.empty()) {
      absl::StrAppend(&query, "continuation-token=", UriEncode(token, false),
                      "&");
    }
    absl::StrAppend(&query, "list-type=2&max-keys=", options_.list_page_keys,
                    "&prefix=", UriEncode(prefix.key, false));
    HttpRequest req;
    req.url = Url(prefix.bucket, "", query);
    TAILOR_ASSIGN_OR_RETURN(HttpResponse r, Send(std::move(req), "", subject));
    if (r.status != 200) return ErrorFor(r, "LIST", subject);
    const auto malformed = [&](const absl::Status& s) {
      return absl::DataLossError(
          absl::StrCat("LIST ", subject,
                       ": a malformed ListObjectsV2 response: ", s.message()));
    };
    absl::StatusOr<std::vector<absl::string_view>> contents =
        XmlElements(r.body, "Contents");
    if (!contents.ok()) return malformed(contents.status());
    for (absl::string_view c : *contents) {
      absl::StatusOr<std::string> key = XmlFirstText(c, "Key");
      if (!key.ok()) return malformed(key.status());
      if (key->empty() || absl::EndsWith(*key, "/")) continue;
      absl::StatusOr<ObjectUri> child = ParseObjectUri(
          absl::StrCat("s3://", prefix.bucket, "/", UriEncode(*key, true)));
      if (!child.ok() || child->key != *key) continue;
      if (out.size() >= kMaxListKeys) {
        return absl::InvalidArgumentError(absl::StrCat(
            "LIST ", subject, ": more than ", kMaxListKeys, " keys"));
      }
      out.push_back(*std::move(child));
    }
    absl::StatusOr<std::string> truncated = XmlFirstText(r.body, "IsTruncated");
    if (!truncated.ok()) return malformed(truncated.status());
    if (*truncated != "true") break;
    absl::StatusOr<std::string> next =
        XmlFirstText(r.body, "NextContinuationToken");
    if (!next.ok()) return malformed(next.status());
    if (next->empty() || *next == token) {
      return malformed(absl::InvalidArgumentError(
          "IsTruncated without a new NextContinuationToken"));
    }
    token = *std::move(next);
  }
  std::sort(out.begin(), out.end(), [](const ObjectUri& a, const ObjectUri& b) {
    return a.key < b.key;
  });
  return out;
}

absl::StatusOr<std::unique_ptr<ObjectUpload>> S3Store::BeginUpload(
    const ObjectUri& uri) {
  if (uri.key.empty() || absl::EndsWith(uri.key, "/")) {
    return absl::InvalidArgumentError(absl::StrCat(
        "upload ", uri.ToString(), ": names a prefix, not an object"));
  }
  return std::unique_ptr<ObjectUpload>(
      new S3Upload(shared_from_this(), uri, options_.part_bytes));
}

absl::Status S3Store::Delete(const ObjectUri& uri) {
  const std::string subject = uri.ToString();
  HttpRequest req;
  req.method = "DELETE";
  req.url = Url(uri.bucket, uri.key, "");
  TAILOR_ASSIGN_OR_RETURN(HttpResponse r, Send(std::move(req), "", subject));
  if (r.status / 100 == 2 || r.status == 404) return absl::OkStatus();
  return ErrorFor(r, "DELETE", subject);
}

absl::Status S3Store::AbortUpload(const ObjectUri& uri,
                                  const std::string& upload_id) {
  const std::string subject = uri.ToString();
  HttpRequest req;
  req.method = "DELETE";
  req.url = Url(uri.bucket, uri.key,
                absl::StrCat("uploadId=", UriEncode(upload_id, false)));
  TAILOR_ASSIGN_OR_RETURN(HttpResponse r, Send(std::move(req), "", subject));
  if (r.status / 100 == 2 || r.status == 404) return absl::OkStatus();
  return ErrorFor(r, "AbortMultipartUpload", subject);
}

}  // namespace tailor
