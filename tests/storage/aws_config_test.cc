#include "storage/aws_config.h"

#include <string>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "storage/remote_test_util.h"
#include "testing/temp_dir.h"

namespace tailor {
namespace {

using ::tailor::testing::MapEnv;
using ::tailor::testing::TempDir;
using ::testing::HasSubstr;
using ::testing::Not;

TEST(AwsConfigTest, EnvironmentWins) {
  absl::StatusOr<AwsConfig> c = LoadAwsConfig(MapEnv({
      {"AWS_ACCESS_KEY_ID", "AKID"},
      {"AWS_SECRET_ACCESS_KEY", "SECRET"},
      {"AWS_SESSION_TOKEN", "TOKEN"},
      {"AWS_DEFAULT_REGION", "eu-west-3"},
      {"AWS_ENDPOINT_URL", "http://127.0.0.1:9000/"},
  }));
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->access_key_id, "AKID");
  EXPECT_EQ(c->secret_access_key, "SECRET");
  EXPECT_EQ(c->session_token, "TOKEN");
  EXPECT_EQ(c->region, "eu-west-3");
  EXPECT_EQ(c->endpoint_url, "http://127.0.0.1:9000");
  EXPECT_EQ(c->credentials_source, "environment");
  // AWS_REGION over AWS_DEFAULT_REGION, AWS_ENDPOINT_URL_S3 over
  // AWS_ENDPOINT_URL.
  c = LoadAwsConfig(MapEnv({{"AWS_REGION", "us-west-2"},
                            {"AWS_DEFAULT_REGION", "eu-west-3"},
                            {"AWS_ENDPOINT_URL", "https://a.example"},
                            {"AWS_ENDPOINT_URL_S3", "https://s3.example"}}));
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->region, "us-west-2");
  EXPECT_EQ(c->endpoint_url, "https://s3.example");
  EXPECT_EQ(c->credentials_source, "none");
}

TEST(AwsConfigTest, OneKeyOfThePairIsAnErrorWithoutTheSecret) {
  absl::StatusOr<AwsConfig> c =
      LoadAwsConfig(MapEnv({{"AWS_SECRET_ACCESS_KEY", "TOPSECRET-abc"}}));
  ASSERT_EQ(c.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(c.status().message(), HasSubstr("AWS_ACCESS_KEY_ID"));
  EXPECT_THAT(c.status().message(), Not(HasSubstr("TOPSECRET")));
}

TEST(AwsConfigTest, ProfilesFromTheSharedFiles) {
  TempDir tmp;
  testing::WriteFile(tmp.Join("credentials"),
                     "# comment\n[default]\naws_access_key_id = DEF\n"
                     "aws_secret_access_key = DEFSECRET\n\n"
                     "[work]\naws_access_key_id=WORK\n"
                     "aws_secret_access_key=WORKSECRET\n"
                     "aws_session_token = WORKTOKEN\n");
  testing::WriteFile(tmp.Join("config"),
                     "[default]\nregion = ap-south-1\n"
                     "[profile work]\nregion = eu-central-1\n"
                     "s3 =\n  endpoint_url = http://minio.local:9000\n"
                     "; another comment\n"
                     "[profile other]\nendpoint_url = https://r2.example\n"
                     "aws_access_key_id = OTHER\n"
                     "aws_secret_access_key = OTHERSECRET\n");
  const std::map<std::string, std::string> files = {
      {"AWS_SHARED_CREDENTIALS_FILE", tmp.Join("credentials")},
      {"AWS_CONFIG_FILE", tmp.Join("config")}};
  absl::StatusOr<AwsConfig> c = LoadAwsConfig(MapEnv(files));
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->access_key_id, "DEF");
  EXPECT_EQ(c->region, "ap-south-1");
  EXPECT_EQ(c->endpoint_url, "");
  auto with = files;
  with["AWS_PROFILE"] = "work";
  c = LoadAwsConfig(MapEnv(with));
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->access_key_id, "WORK");
  EXPECT_EQ(c->secret_access_key, "WORKSECRET");
  EXPECT_EQ(c->session_token, "WORKTOKEN");
  EXPECT_EQ(c->region, "eu-central-1");
  EXPECT_EQ(c->endpoint_url, "http://minio.local:9000");
  with["AWS_PROFILE"] = "other";
  c = LoadAwsConfig(MapEnv(with));
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->access_key_id, "OTHER");
  EXPECT_EQ(c->endpoint_url, "https://r2.example");
  EXPECT_EQ(c->region, "us-east-1");
  with["AWS_PROFILE"] = "absent";
  c = LoadAwsConfig(MapEnv(with));
  EXPECT_EQ(c.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(c.status().message(), HasSubstr("AWS_PROFILE"));
}

TEST(AwsConfigTest, BadFilesAndValuesNameTheSourceNotTheSecret) {
  TempDir tmp;
  // A named file that does not exist.
  absl::StatusOr<AwsConfig> c = LoadAwsConfig(
      MapEnv({{"AWS_SHARED_CREDENTIALS_FILE", tmp.Join("missing")}}));
  ASSERT_EQ(c.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(c.status().message(), HasSubstr("AWS_SHARED_CREDENTIALS_FILE"));
  // A malformed line: named by number, never quoted.
  testing::WriteFile(tmp.Join("bad"),
                     "[default]\naws_secret_access_key SECRETLINE\n");
  c = LoadAwsConfig(MapEnv({{"AWS_SHARED_CREDENTIALS_FILE", tmp.Join("bad")}}));
  ASSERT_EQ(c.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(c.status().message(), HasSubstr("line 2"));
  EXPECT_THAT(c.status().message(), Not(HasSubstr("SECRETLINE")));
  // Half a key pair in a file.
  testing::WriteFile(tmp.Join("half"),
                     "[default]\naws_secret_access_key = HALFSECRET\n");
  c = LoadAwsConfig(
      MapEnv({{"AWS_SHARED_CREDENTIALS_FILE", tmp.Join("half")}}));
  ASSERT_EQ(c.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(c.status().message(), HasSubstr("aws_access_key_id"));
  EXPECT_THAT(c.status().message(), Not(HasSubstr("HALFSECRET")));
  // Endpoints: scheme://host[:port] only.
  for (const char* bad : {"ftp://x", "http://", "https://h/path",
                          "https://user:pw@h", "127.0.0.1:9000"}) {
    c = LoadAwsConfig(MapEnv({{"AWS_ENDPOINT_URL", bad}}));
    EXPECT_EQ(c.status().code(), absl::StatusCode::kInvalidArgument) << bad;
    EXPECT_THAT(c.status().message(), HasSubstr("AWS_ENDPOINT_URL")) << bad;
  }
  c = LoadAwsConfig(MapEnv({{"AWS_REGION", "us-east-1/../x"}}));
  EXPECT_EQ(c.status().code(), absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace tailor
