// hf:// on a Hub-compatible endpoint (storage/hf_store.h).

#include "storage/hf_store.h"

#include <algorithm>

#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "nlohmann/json.hpp"
#include "storage/uri_encode.h"
#include "util/status_macros.h"

namespace tailor {
namespace {

constexpr size_t kMaxListKeys = 100000;
constexpr int kMaxListPages = 1000;

// The "next" target of an RFC 8288 Link header, or "".
std::string NextLink(absl::string_view link) {
  for (absl::string_view part : absl::StrSplit(link, ',')) {
    const size_t open = part.find('<');
    const size_t close = part.find('>');
    if (open == absl::string_view::npos || close == absl::string_view::npos ||
        close < open) {
      continue;
    }
    if (absl::StrContains(part.substr(close), "rel=\"next\"")) {
      return std::string(part.substr(open + 1, close - open - 1));
    }
  }
  return "";
}

}  // namespace

absl::StatusOr<std::string> HfStore::UrlFor(const ObjectUri& uri) const {
  return absl::StrCat(endpoint_, "/", uri.bucket, "/resolve/",
                      UriEncode(uri.revision, false), "/",
                      UriEncode(uri.key, true));
}

std::vector<std::pair<std::string, std::string>> HfStore::AuthHeaders() const {
  if (token_.empty()) return {};
  return {{"Authorization", absl::StrCat("Bearer ", token_)}};
}

absl::StatusOr<std::vector<ObjectUri>> HfStore::List(const ObjectUri& prefix) {
  const std::string subject = prefix.ToString();
  if (!prefix.key.empty() && !absl::EndsWith(prefix.key, "/")) {
    return absl::InvalidArgumentError(absl::StrCat(
        "LIST ", subject, ": a prefix must be a repository or end in '/'"));
  }
  std::string dir = prefix.key;
  if (!dir.empty()) dir.pop_back();
  std::string url =
      absl::StrCat(endpoint_, "/api/models/", prefix.bucket, "/tree/",
                   UriEncode(prefix.revision, false),
                   dir.empty() ? "" : absl::StrCat("/", UriEncode(dir, true)),
                   "?recursive=1");
  std::vector<ObjectUri> out;
  for (int page = 0; !url.empty(); ++page) {
    if (page >= kMaxListPages) {
      return absl::InvalidArgumentError(absl::StrCat(
          "LIST ", subject, ": more than ", kMaxListPages, " pages"));
    }
    HttpRequest req;
    req.url = url;
    req.headers = AuthHeaders();
    TAILOR_ASSIGN_OR_RETURN(HttpResponse r, http().Perform(req, subject));
    if (r.status != 200) return ErrorFor(r, "LIST", subject);
    nlohmann::json doc = nlohmann::json::parse(r.body, nullptr,
                                               /*allow_exceptions=*/false);
    if (!doc.is_array()) {
      return absl::DataLossError(absl::StrCat(
          "LIST ", subject, ": the tree API answered no JSON array"));
    }
    for (const nlohmann::json& e : doc) {
      if (!e.is_object() || !e.contains("type") || !e.contains("path") ||
          !e["type"].is_string() || !e["path"].is_string()) {
        return absl::DataLossError(absl::StrCat(
            "LIST ", subject, ": a tree entry without a type and path"));
      }
      if (e["type"].get<std::string>() != "file") continue;
      const std::string path = e["path"].get<std::string>();
      if (!absl::StartsWith(path, prefix.key)) continue;
      ObjectUri child = prefix;
      child.key = path;
      // Only keys an ObjectUri can name (normalised) are listed.
      absl::StatusOr<ObjectUri> check = ParseObjectUri(absl::StrCat(
          "hf://", prefix.bucket, "@", UriEncode(prefix.revision, false), "/",
          UriEncode(path, true)));
      if (!check.ok() || check->key != path) continue;
      if (out.size() >= kMaxListKeys) {
        return absl::InvalidArgumentError(absl::StrCat(
            "LIST ", subject, ": more than ", kMaxListKeys, " files"));
      }
      out.push_back(std::move(child));
    }
    url = NextLink(r.Header("link"));
    // The token goes to the endpoint only.
    if (!url.empty() && !absl::StartsWith(url, endpoint_ + "/api/")) {
      return absl::DataLossError(
          absl::StrCat("LIST ", subject, ": a next page off the endpoint"));
    }
  }
  std::sort(out.begin(), out.end(), [](const ObjectUri& a, const ObjectUri& b) {
    return a.key < b.key;
  });
  return out;
}

}  // namespace tailor
