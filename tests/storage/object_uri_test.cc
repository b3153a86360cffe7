#include <string>

#include "absl/status/status.h"
#include "gtest/gtest.h"
#include "storage/object_store.h"

namespace tailor {
namespace {

TEST(ObjectUriTest, ParsesTheThreeSchemes) {
  auto s3 = ParseObjectUri("s3://my-bucket/models/llama/model.safetensors");
  ASSERT_TRUE(s3.ok()) << s3.status();
  EXPECT_EQ(s3->scheme, "s3");
  EXPECT_EQ(s3->bucket, "my-bucket");
  EXPECT_EQ(s3->key, "models/llama/model.safetensors");
  EXPECT_EQ(s3->ToString(), "s3://my-bucket/models/llama/model.safetensors");

  auto https = ParseObjectUri("HTTPS://Example.COM:8443/a/b%20c");
  ASSERT_TRUE(https.ok()) << https.status();
  EXPECT_EQ(https->scheme, "https");
  EXPECT_EQ(https->bucket, "example.com:8443");
  EXPECT_EQ(https->key, "a/b c");

  auto hf = ParseObjectUri("hf://meta-llama/Llama-2-7b@v1.0/config.json");
  ASSERT_TRUE(hf.ok()) << hf.status();
  EXPECT_EQ(hf->bucket, "meta-llama/Llama-2-7b");
  EXPECT_EQ(hf->revision, "v1.0");
  EXPECT_EQ(hf->key, "config.json");
  EXPECT_EQ(hf->ToString(), "hf://meta-llama/Llama-2-7b@v1.0/config.json");
  auto hf_main = ParseObjectUri("hf://org/repo");
  ASSERT_TRUE(hf_main.ok()) << hf_main.status();
  EXPECT_EQ(hf_main->revision, "main");
  EXPECT_EQ(hf_main->key, "");
}

TEST(ObjectUriTest, PrefixKeepsItsTrailingSlashAndChildJoins) {
  auto p = ParseObjectUri("s3://bucket/out/");
  ASSERT_TRUE(p.ok()) << p.status();
  EXPECT_EQ(p->key, "out/");
  EXPECT_EQ(p->Child("model.safetensors").key, "out/model.safetensors");
  auto root = ParseObjectUri("s3://bucket");
  ASSERT_TRUE(root.ok()) << root.status();
  EXPECT_EQ(root->Child("x").key, "x");
}

TEST(ObjectUriTest, RefusesTraversalAndTricks) {
  for (const char* bad : {"s3://bucket/a/../b",
                          "s3://bucket/a/%2e%2e/b",
                          "s3://bucket/a//b",
                          "s3://bucket/./a",
                          "s3://bucket/a%2F..%2Fb",
                          "s3://bucket/a%00b",
                          "s3://bucket/a%zz",
                          "s3://bucket/a?x=1",
                          "s3://bucket/a#f",
                          "s3://Bucket/a",
                          "s3://ab/a",
                          "s3://user:pw@bucket/a",
                          "https://user@host/a",
                          "https://host:99999/a",
                          "https:///a",
                          "hf://org",
                          "hf://org/",
                          "hf://org/repo/../x",
                          "hf://org/repo@/x",
                          "hf://org/repo@a/b/x/..",
                          "s3://bucket/a\\b",
                          "s3://bucket/a%0ab"}) {
    auto r = ParseObjectUri(bad);
    EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument)
        << bad << " -> " << (r.ok() ? r->ToString() : r.status().ToString());
  }
}

TEST(ObjectUriTest, OnlyRemoteSchemes) {
  EXPECT_TRUE(IsRemoteUri("s3://b/k"));
  EXPECT_TRUE(IsRemoteUri("S3://b/k"));
  EXPECT_TRUE(IsRemoteUri("https://h/k"));
  EXPECT_TRUE(IsRemoteUri("hf://o/r/k"));
  EXPECT_FALSE(IsRemoteUri("http://h/k"));
  EXPECT_FALSE(IsRemoteUri("file:///x"));
  EXPECT_FALSE(IsRemoteUri("/data/x"));
  EXPECT_EQ(ParseObjectUri("http://h/k").status().code(),
            absl::StatusCode::kUnimplemented);
  EXPECT_EQ(ParseObjectUri("gs://b/k").status().code(),
            absl::StatusCode::kUnimplemented);
}

}  // namespace
}  // namespace tailor
