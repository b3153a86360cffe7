// AWS credentials and settings (storage/aws_config.h).

#include "storage/aws_config.h"

#include <sys/stat.h>

#include <cstdlib>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "util/file_util.h"
#include "util/quote.h"
#include "util/status_macros.h"

namespace tailor {
namespace {

constexpr uint64_t kMaxIniBytes = 1 << 20;

bool Exists(const std::string& path) {
  struct stat st;
  return ::stat(path.c_str(), &st) == 0;
}

// Reads the INI file named by variable `var` (must be readable) or, when it
// is unset, `fallback` (may be absent: an empty file).
absl::StatusOr<IniFile> LoadIni(const EnvLookup& env, absl::string_view var,
                                const std::string& fallback,
                                std::string* path_out) {
  std::string path = env(var);
  const bool named = !path.empty();
  if (!named) path = fallback;
  *path_out = path;
  if (path.empty() || (!named && !Exists(path))) return IniFile{};
  absl::StatusOr<std::string> text = ReadFileToString(path, kMaxIniBytes);
  if (!text.ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat(named ? absl::StrCat(var, " names ") : std::string(),
                     Quote(path), ": ", text.status().message()));
  }
  return ParseIni(*text, path);
}

const std::map<std::string, std::string>* Section(const IniFile& ini,
                                                  const std::string& name) {
  auto it = ini.find(name);
  return it == ini.end() ? nullptr : &it->second;
}

std::string Get(const std::map<std::string, std::string>* s,
                const std::string& key) {
  if (s == nullptr) return "";
  auto it = s->find(key);
  return it == s->end() ? "" : it->second;
}

}  // namespace

std::string ProcessEnv(absl::string_view name) {
  const char* v = std::getenv(std::string(name).c_str());
  return v == nullptr ? "" : v;
}

absl::StatusOr<IniFile> ParseIni(absl::string_view text,
                                 absl::string_view file) {
  IniFile ini;
  std::string section;
  std::string parent;  // "name" of a "name =" line opening nested settings
  bool in_section = false;
  int line_no = 0;
  for (absl::string_view raw : absl::StrSplit(text, '\n')) {
    ++line_no;
    const bool indented =
        !raw.empty() && (raw.front() == ' ' || raw.front() == '\t');
    absl::string_view line = absl::StripAsciiWhitespace(raw);
    if (line.empty() || line.front() == '#' || line.front() == ';') continue;
    const auto bad = [&](absl::string_view rule) {
      return absl::InvalidArgumentError(
          absl::StrCat(Quote(file), " line ", line_no, ": ", rule));
    };
    if (line.front() == '[') {
      if (line.back() != ']' || line.size() < 3) {
        return bad("a section header must be \"[name]\"");
      }
      section = std::string(
          absl::StripAsciiWhitespace(line.substr(1, line.size() - 2)));
      // "[profile  name]" -> "profile name".
      std::vector<absl::string_view> words =
          absl::StrSplit(section, ' ', absl::SkipEmpty());
      section = absl::StrJoin(words, " ");
      ini[section];
      in_section = true;
      parent.clear();
      continue;
    }
    const size_t eq = line.find('=');
    if (eq == absl::string_view::npos || eq == 0) {
      return bad("expected \"key = value\"");
    }
    if (!in_section) return bad("a setting before any [section]");
    const std::string key =
        absl::AsciiStrToLower(absl::StripAsciiWhitespace(line.substr(0, eq)));
    const std::string value(absl::StripAsciiWhitespace(line.substr(eq + 1)));
    if (indented && !parent.empty()) {
      ini[section][absl::StrCat(parent, ".", key)] = value;
      continue;
    }
    parent = value.empty() ? key : "";
    ini[section][key] = value;
  }
  return ini;
}

absl::StatusOr<std::string> CheckEndpointUrl(absl::string_view url,
                                             absl::string_view source) {
  const auto bad = [&](absl::string_view rule) {
    return absl::InvalidArgumentError(
        absl::StrCat(source, " ", Quote(url), ": ", rule));
  };
  absl::string_view rest;
  std::string scheme;
  if (absl::StartsWithIgnoreCase(url, "https://")) {
    rest = url.substr(8);
    scheme = "https://";
  } else if (absl::StartsWithIgnoreCase(url, "http://")) {
    rest = url.substr(7);
    scheme = "http://";
  } else {
    return bad("must start with https:// (or http://)");
  }
  while (absl::EndsWith(rest, "/")) rest.remove_suffix(1);
  if (rest.empty()) return bad("names no host");
  for (char c : rest) {
    if (!(absl::ascii_isalnum(c) || c == '.' || c == '-' || c == ':' ||
          c == '[' || c == ']')) {
      return bad(
          "must be scheme://host[:port] (no path, query, userinfo or "
          "spaces)");
    }
  }
  return absl::StrCat(scheme, rest);
}

absl::StatusOr<AwsConfig> LoadAwsConfig(const EnvLookup& env) {
  AwsConfig config;
  config.profile = env("AWS_PROFILE");
  if (config.profile.empty()) config.profile = "default";
  const std::string home = env("HOME");
  std::string cred_path, config_path;
  TAILOR_ASSIGN_OR_RETURN(
      IniFile creds,
      LoadIni(env, "AWS_SHARED_CREDENTIALS_FILE",
              home.empty() ? "" : home + "/.aws/credentials", &cred_path));
  TAILOR_ASSIGN_OR_RETURN(
      IniFile conf,
      LoadIni(env, "AWS_CONFIG_FILE", home.empty() ? "" : home + "/.aws/config",
              &config_path));
  const auto* cred_section = Section(creds, config.profile);
  const auto* conf_section =
      Section(conf, config.profile == "default"
                        ? "default"
                        : absl::StrCat("profile ", config.profile));
  if (conf_section == nullptr && config.profile == "default") {
    conf_section = Section(conf, "profile default");
  }
  // An explicitly chosen profile must exist somewhere.
  if (!env("AWS_PROFILE").empty() && cred_section == nullptr &&
      conf_section == nullptr) {
    return absl::InvalidArgumentError(absl::StrCat(
        "AWS_PROFILE ", Quote(config.profile), ": no such profile in ",
        Quote(cred_path), " or ", Quote(config_path)));
  }

  const std::string env_id = env("AWS_ACCESS_KEY_ID");
  const std::string env_secret = env("AWS_SECRET_ACCESS_KEY");
  if (!env_id.empty() || !env_secret.empty()) {
    if (env_id.empty() || env_secret.empty()) {
      return absl::InvalidArgumentError(absl::StrCat(
          env_id.empty() ? "AWS_SECRET_ACCESS_KEY" : "AWS_ACCESS_KEY_ID",
          " is set but ",
          env_id.empty() ? "AWS_ACCESS_KEY_ID" : "AWS_SECRET_ACCESS_KEY",
          " is not: set both or neither"));
    }
    config.access_key_id = env_id;
    config.secret_access_key = env_secret;
    config.session_token = env("AWS_SESSION_TOKEN");
    config.credentials_source = "environment";
  } else {
    for (const auto& [section, path] :
         {std::make_pair(cred_section, cred_path),
          std::make_pair(conf_section, config_path)}) {
      const std::string id = Get(section, "aws_access_key_id");
      const std::string secret = Get(section, "aws_secret_access_key");
      if (id.empty() && secret.empty()) continue;
      if (id.empty() || secret.empty()) {
        return absl::InvalidArgumentError(absl::StrCat(
            Quote(path), " profile ", Quote(config.profile), ": ",
            id.empty() ? "aws_access_key_id" : "aws_secret_access_key",
            " is missing (set both keys)"));
      }
      config.access_key_id = id;
      config.secret_access_key = secret;
      config.session_token = Get(section, "aws_session_token");
      config.credentials_source = path;
      break;
    }
    if (config.credentials_source.empty()) config.credentials_source = "none";
  }

  config.region = env("AWS_REGION");
  if (config.region.empty()) config.region = env("AWS_DEFAULT_REGION");
  if (config.region.empty()) config.region = Get(conf_section, "region");
  if (config.region.empty()) config.region = "us-east-1";
  for (char c : config.region) {
    if (!(absl::ascii_isalnum(c) || c == '-')) {
      return absl::InvalidArgumentError(
          absl::StrCat("the AWS region ", Quote(config.region),
                       " may hold only letters, digits and '-'"));
    }
  }

  std::string endpoint_source = "AWS_ENDPOINT_URL_S3";
  std::string endpoint = env("AWS_ENDPOINT_URL_S3");
  if (endpoint.empty()) {
    endpoint_source = "AWS_ENDPOINT_URL";
    endpoint = env("AWS_ENDPOINT_URL");
  }
  if (endpoint.empty()) {
    endpoint_source = absl::StrCat(Quote(config_path), " s3.endpoint_url");
    endpoint = Get(conf_section, "s3.endpoint_url");
  }
  if (endpoint.empty()) {
    endpoint_source = absl::StrCat(Quote(config_path), " endpoint_url");
    endpoint = Get(conf_section, "endpoint_url");
  }
  if (!endpoint.empty()) {
    TAILOR_ASSIGN_OR_RETURN(config.endpoint_url,
                            CheckEndpointUrl(endpoint, endpoint_source));
  }
  return config;
}

}  // namespace tailor
