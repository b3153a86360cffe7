#include "storage/percent_decode.h"

#include <algorithm>
#include <string>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "util/quote.h"

namespace tailor {
namespace {

int HexValue(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

}  // namespace

absl::StatusOr<std::string> PercentDecode(absl::string_view uri,
                                          absl::string_view encoded) {
  std::string out;
  out.reserve(encoded.size());
  for (size_t i = 0; i < encoded.size(); ++i) {
    if (encoded[i] != '%') {
      out.push_back(encoded[i]);
      continue;
    }
    const int hi = i + 1 < encoded.size() ? HexValue(encoded[i + 1]) : -1;
    const int lo = i + 2 < encoded.size() ? HexValue(encoded[i + 2]) : -1;
    if (hi < 0 || lo < 0) {
      return absl::InvalidArgumentError(absl::StrCat(
          "malformed percent escape ",
          Quote(encoded.substr(i, std::min<size_t>(3, encoded.size() - i))),
          " in URI ", Quote(uri), ": '%' must be followed by two hex digits"));
    }
    const char decoded = static_cast<char>(hi * 16 + lo);
    if (decoded == '\0') {
      return absl::InvalidArgumentError(absl::StrCat(
          "URI ", Quote(uri), " contains a percent-encoded NUL byte (%00)"));
    }
    out.push_back(decoded);
    i += 2;
  }
  return out;
}

}  // namespace tailor
