#ifndef TAILOR_STORAGE_AWS_CONFIG_H_
#define TAILOR_STORAGE_AWS_CONFIG_H_

// S3 credentials and settings, resolved the way the AWS CLI and SDKs do
// (issue #16 point 4). Torch-free (tailor_remote).
//
//   profile      AWS_PROFILE, else "default"
//   credentials  AWS_ACCESS_KEY_ID + AWS_SECRET_ACCESS_KEY (+
//                AWS_SESSION_TOKEN), both or neither; else the profile's
//                aws_access_key_id / aws_secret_access_key /
//                aws_session_token in the shared credentials file
//                (AWS_SHARED_CREDENTIALS_FILE, else ~/.aws/credentials:
//                sections "[name]"), else in the config file
//                (AWS_CONFIG_FILE, else ~/.aws/config: sections
//                "[profile name]", "[default]"); else none (unsigned
//                requests, which a private bucket refuses: 403)
//   region       AWS_REGION, AWS_DEFAULT_REGION, the profile's `region`,
//                else "us-east-1"
//   endpoint     AWS_ENDPOINT_URL_S3, AWS_ENDPOINT_URL, the profile's
//                `endpoint_url`, else AWS's own (virtual-hosted)
//
// A file named by a variable must be readable; the default files may be
// absent. Errors name the variable or file and the rule broken and never
// contain a secret (a value is quoted only when it is not one).

#include <functional>
#include <map>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace tailor {

struct AwsConfig {
  std::string profile;
  std::string access_key_id;      // empty: anonymous
  std::string secret_access_key;  // secret
  std::string session_token;      // secret; sent as x-amz-security-token
  std::string region;
  // "" (AWS) or "http[s]://host[:port]" with no path, query or userinfo.
  std::string endpoint_url;
  // Where the credentials came from ("environment", a file path, "none"):
  // for messages.
  std::string credentials_source;
};

// Looks up an environment variable; nullopt-like "" for unset. Tests pass
// a map.
using EnvLookup = std::function<std::string(absl::string_view name)>;

// The process environment.
std::string ProcessEnv(absl::string_view name);

absl::StatusOr<AwsConfig> LoadAwsConfig(const EnvLookup& env = ProcessEnv);

// An INI file: section -> key -> value; keys lower-cased, values trimmed;
// '#' and ';' start comment lines; indented "key = value" lines under a
// "name =" line (nested settings such as "s3 =") are kept as
// "name.key". INVALID_ARGUMENT naming `file` and the line for a malformed
// line (a line is never quoted: it may hold a secret).
using IniFile = std::map<std::string, std::map<std::string, std::string>>;
absl::StatusOr<IniFile> ParseIni(absl::string_view text,
                                 absl::string_view file);

// Checks an endpoint URL (see AwsConfig::endpoint_url); `source` names the
// variable or file. Returns it without a trailing '/'.
absl::StatusOr<std::string> CheckEndpointUrl(absl::string_view url,
                                             absl::string_view source);

}  // namespace tailor

#endif  // TAILOR_STORAGE_AWS_CONFIG_H_
