// The libcurl transport of the remote stores (storage/http_client.h).

#include "storage/http_client.h"

#include <curl/curl.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <mutex>
#include <random>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/time/clock.h"
#include "storage/remote_stats.h"
#include "util/quote.h"

namespace tailor {
namespace {

void GlobalInitOnce() {
  static std::once_flag once;
  std::call_once(once, [] { curl_global_init(CURL_GLOBAL_DEFAULT); });
}

// State of one attempt, shared with the curl callbacks.
struct Attempt {
  const HttpRequest* request = nullptr;
  CURL* curl = nullptr;
  HttpResponse response;
  bool overflow = false;  // the body outgrew its bound (aborted)
};

size_t OnHeader(char* data, size_t size, size_t n, void* user) {
  auto* a = static_cast<Attempt*>(user);
  const size_t bytes = size * n;
  absl::string_view line(data, bytes);
  line = absl::StripTrailingAsciiWhitespace(line);
  if (absl::StartsWith(line, "HTTP/")) {
    // A new response (the first, or one after a redirect or a 100
    // Continue): what came before belongs to another one.
    a->response.headers.clear();
    a->response.body.clear();
    a->response.body_bytes = 0;
    a->overflow = false;
    return bytes;
  }
  const size_t colon = line.find(':');
  if (colon == absl::string_view::npos) return bytes;
  std::string name = absl::AsciiStrToLower(line.substr(0, colon));
  a->response.headers[name] =
      std::string(absl::StripLeadingAsciiWhitespace(line.substr(colon + 1)));
  return bytes;
}

size_t OnBody(char* data, size_t size, size_t n, void* user) {
  auto* a = static_cast<Attempt*>(user);
  const size_t bytes = size * n;
  long status = 0;
  curl_easy_getinfo(a->curl, CURLINFO_RESPONSE_CODE, &status);
  const HttpRequest& r = *a->request;
  GlobalRemoteStats().read_bytes.fetch_add(bytes, std::memory_order_relaxed);
  const uint64_t at = a->response.body_bytes;
  a->response.body_bytes += bytes;
  if (r.expected_body_bytes.has_value() && r.out != nullptr &&
      status / 100 == 2) {
    if (at + bytes > *r.expected_body_bytes) {
      a->overflow = true;
      return 0;  // CURLE_WRITE_ERROR: a long body
    }
    std::memcpy(r.out + at, data, bytes);
    return bytes;
  }
  const uint64_t cap = std::min<uint64_t>(r.max_body_bytes, 64 << 20);
  if (at + bytes > cap) {
    a->overflow = true;
    return 0;
  }
  a->response.body.append(data, bytes);
  return bytes;
}

struct CurlFree {
  void operator()(CURL* c) const { curl_easy_cleanup(c); }
};
struct SlistFree {
  void operator()(curl_slist* s) const { curl_slist_free_all(s); }
};

// How an attempt ended.
enum class Outcome { kResponse, kRetry, kFail };

struct AttemptResult {
  Outcome outcome = Outcome::kFail;
  absl::Status status;          // the error if not kResponse
  bool before_request = false;  // failed before the request was sent
};

std::string CaSource(const HttpClientOptions& o) {
  if (!o.ca_file.empty()) return absl::StrCat("--ca-file ", Quote(o.ca_file));
  const char* env = std::getenv("SSL_CERT_FILE");
  if (env != nullptr && *env != '\0') {
    return absl::StrCat("SSL_CERT_FILE ", Quote(env));
  }
  return "the system CA store";
}

AttemptResult RunAttempt(const HttpClientOptions& o, const HttpRequest& r,
                         absl::string_view subject, Attempt& a) {
  std::unique_ptr<CURL, CurlFree> curl(curl_easy_init());
  AttemptResult result;
  if (curl == nullptr) {
    result.status = absl::ResourceExhaustedError("curl_easy_init failed");
    return result;
  }
  CURL* c = curl.get();
  a.curl = c;
  char errbuf[CURL_ERROR_SIZE] = {0};
  curl_easy_setopt(c, CURLOPT_ERRORBUFFER, errbuf);
  curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
  curl_easy_setopt(c, CURLOPT_URL, r.url.c_str());
  const bool plain = absl::StartsWithIgnoreCase(r.url, "http://");
  curl_easy_setopt(c, CURLOPT_PROTOCOLS_STR, plain ? "http" : "https");
  // Redirects never downgrade an https request to plaintext.
  curl_easy_setopt(c, CURLOPT_REDIR_PROTOCOLS_STR,
                   plain ? "http,https" : "https");
  if (r.follow_redirects) {
    curl_easy_setopt(c, CURLOPT_FOLLOWLOCATION, 1L);
    curl_easy_setopt(c, CURLOPT_MAXREDIRS, static_cast<long>(o.max_redirects));
    // Custom Authorization headers stay with the first host (libcurl's
    // default; stated here so that it never changes by accident).
    curl_easy_setopt(c, CURLOPT_UNRESTRICTED_AUTH, 0L);
  }
  curl_easy_setopt(c, CURLOPT_SSL_VERIFYPEER, 1L);
  curl_easy_setopt(c, CURLOPT_SSL_VERIFYHOST, 2L);
  std::string ca = o.ca_file;
  if (ca.empty()) {
    const char* env = std::getenv("SSL_CERT_FILE");
    if (env != nullptr) ca = env;
  }
  if (!ca.empty()) curl_easy_setopt(c, CURLOPT_CAINFO, ca.c_str());
  curl_easy_setopt(c, CURLOPT_CONNECTTIMEOUT_MS,
                   static_cast<long>(std::max<int64_t>(
                       1, absl::ToInt64Milliseconds(o.connect_timeout))));
  curl_easy_setopt(c, CURLOPT_LOW_SPEED_LIMIT, 1L);
  curl_easy_setopt(c, CURLOPT_LOW_SPEED_TIME,
                   static_cast<long>(std::max<int64_t>(
                       1, absl::ToInt64Seconds(o.stall_timeout))));
  curl_easy_setopt(c, CURLOPT_HEADERFUNCTION, OnHeader);
  curl_easy_setopt(c, CURLOPT_HEADERDATA, &a);
  curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, OnBody);
  curl_easy_setopt(c, CURLOPT_WRITEDATA, &a);

  if (r.method == "HEAD") {
    curl_easy_setopt(c, CURLOPT_NOBODY, 1L);
  } else if (r.method == "PUT" || r.method == "POST") {
    // Never NULL: libcurl would then read the body from stdin.
    curl_easy_setopt(c, CURLOPT_POSTFIELDS,
                     r.body.empty() ? "" : r.body.data());
    curl_easy_setopt(c, CURLOPT_POSTFIELDSIZE_LARGE,
                     static_cast<curl_off_t>(r.body.size()));
    if (r.method == "PUT") curl_easy_setopt(c, CURLOPT_CUSTOMREQUEST, "PUT");
  } else if (r.method != "GET") {
    curl_easy_setopt(c, CURLOPT_CUSTOMREQUEST, r.method.c_str());
  }

  curl_slist* raw = nullptr;
  bool has_content_type = false;
  for (const auto& [name, value] : r.headers) {
    if (absl::EqualsIgnoreCase(name, "content-type")) has_content_type = true;
    raw = curl_slist_append(raw, absl::StrCat(name, ": ", value).c_str());
  }
  // libcurl would add a form content type to a POST/PUT body.
  if (!has_content_type && (r.method == "PUT" || r.method == "POST")) {
    raw = curl_slist_append(raw, "Content-Type: application/octet-stream");
  }
  std::unique_ptr<curl_slist, SlistFree> headers(raw);
  curl_easy_setopt(c, CURLOPT_HTTPHEADER, headers.get());
  std::string userpwd;
  if (!r.aws_sigv4.empty()) {
    curl_easy_setopt(c, CURLOPT_AWS_SIGV4, r.aws_sigv4.c_str());
    userpwd = absl::StrCat(r.aws_access_key, ":", r.aws_secret_key);
    curl_easy_setopt(c, CURLOPT_USERPWD, userpwd.c_str());
  }

  GlobalRemoteStats().requests.fetch_add(1, std::memory_order_relaxed);
  const CURLcode code = curl_easy_perform(c);
  // The credentials leave no copy behind in this frame.
  std::fill(userpwd.begin(), userpwd.end(), '\0');
  curl_off_t sent = 0;
  curl_easy_getinfo(c, CURLINFO_SIZE_UPLOAD_T, &sent);
  GlobalRemoteStats().written_bytes.fetch_add(static_cast<uint64_t>(sent),
                                              std::memory_order_relaxed);
  curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &a.response.status);
  char* effective = nullptr;
  curl_easy_getinfo(c, CURLINFO_EFFECTIVE_URL, &effective);
  if (effective != nullptr) a.response.effective_url = effective;

  const std::string what = absl::StrCat(r.method, " ", subject);
  if (code == CURLE_OK || (code == CURLE_WRITE_ERROR && a.overflow)) {
    const long s = a.response.status;
    if ((s >= 500 || s == 429) && r.idempotent) {
      result.outcome = Outcome::kRetry;
      result.status = absl::UnavailableError(absl::StrCat(
          what, ": HTTP ", s, s == 429 ? " (throttled)" : " (server error)"));
      return result;
    }
    if (s / 100 == 2 && r.expected_body_bytes.has_value() &&
        (a.overflow || a.response.body_bytes != *r.expected_body_bytes)) {
      result.outcome = Outcome::kRetry;
      result.status = absl::DataLossError(absl::StrFormat(
          "%s: the body is %s than the %d bytes asked for (%d received)", what,
          a.overflow ? "longer" : "shorter", *r.expected_body_bytes,
          a.response.body_bytes));
      return result;
    }
    if (a.overflow) {
      result.status = absl::InvalidArgumentError(absl::StrCat(
          what, ": the response body exceeds ", r.max_body_bytes, " bytes"));
      return result;
    }
    result.outcome = Outcome::kResponse;
    return result;
  }
  const std::string detail =
      RedactSecrets(errbuf[0] != '\0' ? errbuf : curl_easy_strerror(code));
  switch (code) {
    case CURLE_PEER_FAILED_VERIFICATION:
    case CURLE_SSL_CACERT_BADFILE:
    case CURLE_SSL_CERTPROBLEM:
    case CURLE_SSL_ISSUER_ERROR:
      result.status = absl::FailedPreconditionError(
          absl::StrCat(what, ": TLS verification failed (trusting ",
                       CaSource(o), "): ", detail));
      return result;
    case CURLE_UNSUPPORTED_PROTOCOL:
    case CURLE_URL_MALFORMAT:
    case CURLE_TOO_MANY_REDIRECTS:
      result.status =
          absl::InvalidArgumentError(absl::StrCat(what, ": ", detail));
      return result;
    case CURLE_COULDNT_RESOLVE_HOST:
    case CURLE_COULDNT_CONNECT:
      result.before_request = true;
      break;
    default:
      break;
  }
  result.outcome = Outcome::kRetry;
  result.status = absl::UnavailableError(absl::StrCat(
      what, ": ",
      code == CURLE_OPERATION_TIMEDOUT ? "timed out or stalled: " : "",
      detail));
  return result;
}

absl::Duration Backoff(const HttpClientOptions& o, int attempt) {
  thread_local std::mt19937_64 rng{std::random_device{}()};
  absl::Duration cap = o.initial_backoff;
  for (int i = 1; i < attempt && cap < o.max_backoff; ++i) cap *= 2;
  cap = std::min(cap, o.max_backoff);
  std::uniform_int_distribution<int64_t> pick(
      0, std::max<int64_t>(0, absl::ToInt64Microseconds(cap)));
  return absl::Microseconds(pick(rng));  // full jitter
}

}  // namespace

std::string HttpResponse::Header(absl::string_view name) const {
  auto it = headers.find(std::string(name));
  return it == headers.end() ? std::string() : it->second;
}

HttpClient::HttpClient(HttpClientOptions options)
    : options_(std::move(options)) {
  GlobalInitOnce();
}

absl::StatusOr<HttpResponse> HttpClient::Perform(const HttpRequest& request,
                                                 absl::string_view subject) {
  const int attempts = std::max(1, options_.max_attempts);
  absl::Status last;
  for (int i = 1; i <= attempts; ++i) {
    if (i > 1) {
      GlobalRemoteStats().retries.fetch_add(1, std::memory_order_relaxed);
      absl::SleepFor(Backoff(options_, i - 1));
    }
    Attempt a;
    a.request = &request;
    AttemptResult r = RunAttempt(options_, request, subject, a);
    if (r.outcome == Outcome::kResponse) {
      a.response.attempts = i;
      return std::move(a.response);
    }
    last = r.status;
    const bool may_retry = r.outcome == Outcome::kRetry &&
                           (request.idempotent || r.before_request);
    if (!may_retry) break;
    if (i == attempts) {
      last = absl::Status(last.code(), absl::StrCat(last.message(), " (after ",
                                                    attempts, " attempts)"));
    }
  }
  GlobalRemoteStats().failures.fetch_add(1, std::memory_order_relaxed);
  return last;
}

std::string RedactSecrets(absl::string_view text) {
  std::string out(text);
  const auto lower = [](const std::string& s) {
    return absl::AsciiStrToLower(s);
  };
  // Replaces, after each (case-insensitive) marker, the value up to one of
  // `stops` (or the end).
  const auto scrub = [&](absl::string_view marker, absl::string_view stops) {
    std::string l = lower(out);
    const std::string m = absl::AsciiStrToLower(marker);
    size_t pos = 0;
    while ((pos = l.find(m, pos)) != std::string::npos) {
      const size_t start = pos + m.size();
      size_t end = out.find_first_of(std::string(stops), start);
      if (end == std::string::npos) end = out.size();
      out.replace(start, end - start, "<redacted>");
      l = lower(out);
      pos = start + std::strlen("<redacted>");
    }
  };
  // Header values: to the end of the line.
  scrub("authorization:", "\r\n");
  scrub("x-amz-security-token:", "\r\n");
  scrub("cookie:", "\r\n");
  // SigV4 fields and query parameters; bearer tokens.
  scrub("credential=", ",& \r\n\"");
  scrub("signature=", ",& \r\n\"");
  scrub("x-amz-security-token=", ",& \r\n\"");
  scrub("bearer ", ",& \r\n\"");
  return out;
}

}  // namespace tailor
