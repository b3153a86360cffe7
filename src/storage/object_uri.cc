// ObjectUri parsing and normalisation (storage/object_store.h).

#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/string_view.h"
#include "storage/object_store.h"
#include "storage/percent_decode.h"
#include "storage/uri_resolver.h"
#include "util/quote.h"
#include "util/status_macros.h"

namespace tailor {
namespace {

// Longest URI accepted (S3 keys are at most 1024 bytes; the rest is scheme
// and bucket).
constexpr size_t kMaxUriBytes = 2048;

absl::Status Invalid(absl::string_view uri, absl::string_view rule) {
  return absl::InvalidArgumentError(
      absl::StrCat("remote URI ", Quote(uri), ": ", rule));
}

bool IsRemoteScheme(absl::string_view scheme) {
  return scheme == "s3" || scheme == "https" || scheme == "hf";
}

// S3 bucket names (the rules common to AWS and S3-compatible stores):
// 3-63 of [a-z0-9.-], starting and ending with a letter or digit.
bool ValidBucket(absl::string_view b) {
  if (b.size() < 3 || b.size() > 63) return false;
  for (char c : b) {
    if (!(absl::ascii_islower(c) || absl::ascii_isdigit(c) || c == '.' ||
          c == '-')) {
      return false;
    }
  }
  return absl::ascii_isalnum(b.front()) && absl::ascii_isalnum(b.back());
}

// host[:port] of an https:// URI: a DNS name or IPv4 address (no userinfo,
// no IPv6 literal), optional decimal port 1..65535.
bool ValidHost(absl::string_view h) {
  absl::string_view host = h;
  const size_t colon = h.rfind(':');
  if (colon != absl::string_view::npos) {
    host = h.substr(0, colon);
    const absl::string_view port = h.substr(colon + 1);
    if (port.empty() || port.size() > 5) return false;
    int value = 0;
    for (char c : port) {
      if (!absl::ascii_isdigit(c)) return false;
      value = value * 10 + (c - '0');
    }
    if (value < 1 || value > 65535) return false;
  }
  if (host.empty() || host.size() > 253) return false;
  for (char c : host) {
    if (!(absl::ascii_isalnum(c) || c == '.' || c == '-')) return false;
  }
  return host.front() != '.' && host.front() != '-';
}

// A Hub repository id: "org/name", each part [A-Za-z0-9._-], not "." / "..".
bool ValidRepo(absl::string_view r) {
  const std::vector<absl::string_view> parts = absl::StrSplit(r, '/');
  if (parts.size() != 2) return false;
  for (absl::string_view p : parts) {
    if (p.empty() || p.size() > 96 || p == "." || p == "..") return false;
    for (char c : p) {
      if (!(absl::ascii_isalnum(c) || c == '.' || c == '_' || c == '-')) {
        return false;
      }
    }
  }
  return true;
}

// Checks and normalises a decoded key: segments separated by single '/',
// none empty, ".", or ".."; no control bytes or backslashes. A trailing '/'
// (a prefix) is kept.
absl::Status CheckKey(absl::string_view uri, absl::string_view key) {
  if (key.size() > 1024) return Invalid(uri, "key longer than 1024 bytes");
  for (char c : key) {
    const unsigned char u = static_cast<unsigned char>(c);
    if (u < 0x20 || u == 0x7f) {
      return Invalid(uri, "key contains a control byte");
    }
    if (c == '\\') return Invalid(uri, "key contains a backslash");
  }
  if (key.empty()) return absl::OkStatus();
  absl::string_view body = key;
  if (absl::EndsWith(body, "/")) body.remove_suffix(1);
  if (body.empty()) return Invalid(uri, "key is only '/'");
  for (absl::string_view seg : absl::StrSplit(body, '/')) {
    if (seg.empty()) return Invalid(uri, "key has an empty segment ('//')");
    if (seg == "." || seg == "..") {
      return Invalid(uri, "key has a '.' or '..' segment");
    }
  }
  return absl::OkStatus();
}

}  // namespace

bool IsRemoteUri(absl::string_view uri) {
  return IsRemoteScheme(UriScheme(uri));
}

absl::StatusOr<ObjectUri> ParseObjectUri(absl::string_view uri) {
  const std::string scheme = UriScheme(uri);
  if (!IsRemoteScheme(scheme)) {
    return absl::UnimplementedError(absl::StrCat(
        "URI ", Quote(uri),
        " is not a remote object (supported: s3://, https://, hf://)"));
  }
  if (uri.size() > kMaxUriBytes) {
    return Invalid(uri, absl::StrCat("longer than ", kMaxUriBytes, " bytes"));
  }
  if (uri.find_first_of("?#") != absl::string_view::npos) {
    return Invalid(uri, "query strings and fragments are not allowed");
  }
  absl::string_view rest = uri.substr(scheme.size() + 3);
  ObjectUri out;
  out.scheme = scheme;
  if (scheme == "hf") {
    // org/repo[@rev]/path
    const size_t first = rest.find('/');
    if (first == absl::string_view::npos) {
      return Invalid(uri, "expected hf://org/repo[@revision]/path");
    }
    const size_t second = rest.find('/', first + 1);
    absl::string_view repo = rest.substr(0, second);
    rest = second == absl::string_view::npos ? absl::string_view()
                                             : rest.substr(second + 1);
    const size_t at = repo.find('@');
    if (at != absl::string_view::npos) {
      out.revision = std::string(repo.substr(at + 1));
      repo = repo.substr(0, at);
      if (out.revision.empty() || out.revision.size() > 128) {
        return Invalid(uri, "revision after '@' must be 1-128 bytes");
      }
      for (char c : out.revision) {
        if (!(absl::ascii_isalnum(c) || c == '.' || c == '_' || c == '-')) {
          return Invalid(uri, "revision may contain only [A-Za-z0-9._-]");
        }
      }
    } else {
      out.revision = "main";
    }
    if (!ValidRepo(repo)) {
      return Invalid(uri, "repository must be org/name of [A-Za-z0-9._-]");
    }
    out.bucket = std::string(repo);
  } else {
    const size_t slash = rest.find('/');
    const absl::string_view authority = rest.substr(0, slash);
    rest = slash == absl::string_view::npos ? absl::string_view()
                                            : rest.substr(slash + 1);
    if (authority.find('@') != absl::string_view::npos) {
      return Invalid(uri, "credentials in the URI are not allowed");
    }
    if (scheme == "s3" && !ValidBucket(authority)) {
      return Invalid(uri,
                     "bucket must be 3-63 characters of [a-z0-9.-], starting "
                     "and ending with a letter or digit");
    }
    if (scheme == "https" && !ValidHost(absl::AsciiStrToLower(authority))) {
      return Invalid(uri, "host must be a DNS name or IPv4 address[:port]");
    }
    out.bucket = absl::AsciiStrToLower(authority);
  }
  TAILOR_ASSIGN_OR_RETURN(out.key, PercentDecode(uri, rest));
  TAILOR_RETURN_IF_ERROR(CheckKey(uri, out.key));
  return out;
}

std::string ObjectUri::ToString() const {
  if (scheme == "hf") {
    const std::string rev = revision.empty() || revision == "main"
                                ? std::string()
                                : absl::StrCat("@", revision);
    return absl::StrCat("hf://", bucket, rev, key.empty() ? "" : "/", key);
  }
  return absl::StrCat(scheme, "://", bucket, "/", key);
}

absl::Status CheckObjectRange(const ObjectUri& uri, const ObjectInfo& expected,
                              uint64_t offset, uint64_t length) {
  if (offset > expected.size || length > expected.size - offset) {
    return absl::InvalidArgumentError(absl::StrCat(
        "GET ", uri.ToString(), ": the range [", offset, ", ", offset + length,
        ") lies past the object's ", expected.size, " bytes"));
  }
  return absl::OkStatus();
}

ObjectUri ObjectUri::Child(absl::string_view name) const {
  ObjectUri child = *this;
  if (!child.key.empty() && !absl::EndsWith(child.key, "/")) {
    child.key.push_back('/');
  }
  absl::StrAppend(&child.key, name);
  return child;
}

}  // namespace tailor
