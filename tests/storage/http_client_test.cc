// Transport pieces that need no server: secret redaction, SigV4
// percent-encoding.

#include "storage/http_client.h"

#include <string>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "storage/uri_encode.h"

namespace tailor {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;

TEST(RedactSecretsTest, ScrubsAuthorizationTokensAndSignatures) {
  const std::string text =
      "> GET /b/k HTTP/1.1\r\n"
      "Authorization: AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20260101/"
      "us-east-1/s3/aws4_request, SignedHeaders=host;x-amz-date, "
      "Signature=deadbeefcafe\r\n"
      "x-amz-security-token: SESSIONTOKEN\r\n"
      "authorization: Bearer hf_TOKEN123\r\n"
      "Cookie: session=COOKIEVALUE\r\n"
      "url: https://h/k?X-Amz-Credential=AKID2&X-Amz-Signature=SIG2&"
      "X-Amz-Security-Token=TOK2&ok=1\n"
      "header Bearer hf_OTHER in text";
  const std::string out = RedactSecrets(text);
  for (const char* secret :
       {"AKIDEXAMPLE", "deadbeefcafe", "SESSIONTOKEN", "hf_TOKEN123",
        "COOKIEVALUE", "AKID2", "SIG2", "TOK2", "hf_OTHER"}) {
    EXPECT_THAT(out, Not(HasSubstr(secret))) << out;
  }
  EXPECT_THAT(out, HasSubstr("GET /b/k"));
  EXPECT_THAT(out, HasSubstr("ok=1"));
  EXPECT_THAT(out, HasSubstr("<redacted>"));
  EXPECT_EQ(RedactSecrets("nothing secret here"), "nothing secret here");
}

TEST(UriEncodeTest, FollowsSigV4Rules) {
  EXPECT_EQ(UriEncode("a b+c/d~e_f.g-h", true), "a%20b%2Bc/d~e_f.g-h");
  EXPECT_EQ(UriEncode("a/b", false), "a%2Fb");
  EXPECT_EQ(UriEncode("\xC3\xBC=&?#%*'()!", true),
            "%C3%BC%3D%26%3F%23%25%2A%27%28%29%21");
}

}  // namespace
}  // namespace tailor
