// The ranged read and error mapping the HTTP object stores share
// (storage/http_object_read.h), against a scripted transport.

#include "storage/http_object_read.h"

#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace tailor {
namespace {

using ::testing::HasSubstr;
using ::testing::Pair;

TEST(HttpObjectReadTest, EtagForms) {
  EXPECT_EQ(UnquoteEtag("\"abc\""), "abc");
  EXPECT_EQ(UnquoteEtag("abc"), "abc");
  EXPECT_EQ(UnquoteEtag("\""), "\"");
  EXPECT_TRUE(IsWeakEtag("W/\"abc\""));
  EXPECT_FALSE(IsWeakEtag("\"abc\""));
}

TEST(HttpObjectReadTest, ContentRangeSize) {
  uint64_t size = 0;
  EXPECT_TRUE(ParseContentRangeSize("bytes 0-0/1234", &size));
  EXPECT_EQ(size, 1234u);
  EXPECT_FALSE(ParseContentRangeSize("bytes 0-0/*", &size));
  EXPECT_FALSE(ParseContentRangeSize("items 0-0/5", &size));
  EXPECT_FALSE(ParseContentRangeSize("bytes 0-0", &size));
}

TEST(HttpObjectReadTest, StatusErrorsFollowTheStoreContract) {
  struct Case {
    long status;
    absl::StatusCode code;
    const char* message;
  };
  const Case cases[] = {
      {401, absl::StatusCode::kPermissionDenied,
       "GET s3://b/k: access denied (HTTP 401; hint)"},
      {403, absl::StatusCode::kPermissionDenied,
       "GET s3://b/k: access denied (HTTP 403; hint)"},
      {404, absl::StatusCode::kNotFound, "GET s3://b/k: not found (HTTP 404)"},
      {412, absl::StatusCode::kFailedPrecondition,
       "GET s3://b/k: object changed while reading (HTTP 412)"},
      {416, absl::StatusCode::kInvalidArgument,
       "GET s3://b/k: range not satisfiable (HTTP 416)"},
      {429, absl::StatusCode::kUnavailable, "GET s3://b/k: HTTP 429"},
      {503, absl::StatusCode::kUnavailable, "GET s3://b/k: HTTP 503"},
      {400, absl::StatusCode::kInvalidArgument,
       "GET s3://b/k: refused (HTTP 400)"},
      {410, absl::StatusCode::kInvalidArgument,
       "GET s3://b/k: refused (HTTP 410)"},
  };
  for (const Case& c : cases) {
    const absl::Status s = HttpStatusError(
        c.status, "GET", "s3://b/k", absl::StrCat("HTTP ", c.status), "; hint");
    EXPECT_EQ(s.code(), c.code) << c.status;
    EXPECT_EQ(s.message(), c.message);
  }
}

// A store's transport: completes the request (its URL and a header of its
// own), records it and answers with `response`.
struct Scripted {
  HttpResponse response;
  std::vector<HttpRequest> sent;
  HttpSend Send() {
    return [this](HttpRequest r) -> absl::StatusOr<HttpResponse> {
      r.url = "https://h/k";
      r.headers.emplace_back("X-Store", "own");
      sent.push_back(std::move(r));
      return response;
    };
  }
};

absl::Status ErrorForTest(const HttpResponse& r, absl::string_view op,
                          absl::string_view subject) {
  return absl::InternalError(
      absl::StrCat("error_for ", op, " ", subject, " ", r.status));
}

ObjectUri Uri() { return *ParseObjectUri("https://h/k"); }

absl::Status Read(Scripted& t, const ObjectInfo& expected, uint64_t offset,
                  uint64_t length, char* out) {
  return ReadRangeOverHttp(Uri(), expected, offset, length, out, t.Send(),
                           &ErrorForTest);
}

TEST(HttpObjectReadTest, RangedGetCarriesRangeIfMatchAndTheOutputBuffer) {
  Scripted t;
  t.response.status = 206;
  t.response.headers["content-range"] = "bytes 10-13/100";
  t.response.headers["etag"] = "\"e1\"";
  char out[4];
  ASSERT_TRUE(Read(t, ObjectInfo{100, "e1"}, 10, 4, out).ok());
  ASSERT_EQ(t.sent.size(), 1u);
  const HttpRequest& r = t.sent[0];
  EXPECT_EQ(r.url, "https://h/k");
  EXPECT_THAT(r.headers, ::testing::ElementsAre(Pair("Range", "bytes=10-13"),
                                                Pair("If-Match", "\"e1\""),
                                                Pair("X-Store", "own")));
  EXPECT_EQ(r.expected_body_bytes, 4u);
  EXPECT_EQ(r.out, out);

  // No ETag known: no If-Match.
  t.sent.clear();
  t.response.headers.erase("etag");
  ASSERT_TRUE(Read(t, ObjectInfo{100, ""}, 10, 4, out).ok());
  EXPECT_THAT(t.sent[0].headers,
              ::testing::ElementsAre(Pair("Range", "bytes=10-13"),
                                     Pair("X-Store", "own")));
}

TEST(HttpObjectReadTest, ARangePastTheObjectOrEmptySendsNothing) {
  Scripted t;
  t.response.status = 206;
  char out[8];
  const absl::Status past = Read(t, ObjectInfo{100, ""}, 96, 8, out);
  EXPECT_EQ(past.code(), absl::StatusCode::kInvalidArgument) << past;
  EXPECT_TRUE(Read(t, ObjectInfo{100, ""}, 100, 0, out).ok());
  EXPECT_TRUE(t.sent.empty());
}

TEST(HttpObjectReadTest, A200IsTheWholeObjectOnly) {
  Scripted t;
  t.response.status = 200;
  char out[100];
  EXPECT_TRUE(Read(t, ObjectInfo{100, ""}, 0, 100, out).ok());
  const absl::Status part = Read(t, ObjectInfo{100, ""}, 0, 10, out);
  EXPECT_EQ(part.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(part.message(),
            "GET https://h/k: the server ignored the Range header");
}

TEST(HttpObjectReadTest, AnotherSizeOrStrongEtagIsAChangedObject) {
  Scripted t;
  t.response.status = 206;
  t.response.headers["content-range"] = "bytes 0-3/99";
  char out[4];
  absl::Status s = Read(t, ObjectInfo{100, ""}, 0, 4, out);
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(s.message(),
            "GET https://h/k: object changed while reading (99 bytes now, "
            "100 before)");

  t.response.headers["content-range"] = "bytes 0-3/100";
  t.response.headers["etag"] = "\"other\"";
  s = Read(t, ObjectInfo{100, "e1"}, 0, 4, out);
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(s.message(), HasSubstr("object changed while reading (ETag"));
  EXPECT_THAT(s.message(), HasSubstr("other"));

  // A weak ETag cannot be compared; an unknown size (*) is not checked.
  t.response.headers["etag"] = "W/\"other\"";
  t.response.headers["content-range"] = "bytes 0-3/*";
  EXPECT_TRUE(Read(t, ObjectInfo{100, "e1"}, 0, 4, out).ok());
}

TEST(HttpObjectReadTest, OtherStatusesAreTheStoresAndTransportErrorsPassOn) {
  Scripted t;
  t.response.status = 404;
  char out[4];
  absl::Status s = Read(t, ObjectInfo{100, ""}, 0, 4, out);
  EXPECT_EQ(s.code(), absl::StatusCode::kInternal);
  EXPECT_EQ(s.message(), "error_for GET https://h/k 404");

  s = ReadRangeOverHttp(
      Uri(), ObjectInfo{100, ""}, 0, 4, out,
      [](HttpRequest) -> absl::StatusOr<HttpResponse> {
        return absl::UnavailableError("reset");
      },
      &ErrorForTest);
  EXPECT_EQ(s, absl::UnavailableError("reset"));
}

}  // namespace
}  // namespace tailor
