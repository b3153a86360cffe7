#include "util/quote.h"

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace tailor {
namespace {

// Length of the valid UTF-8 sequence starting at text[i], or 0 if the bytes
// there are not one (overlong forms, surrogates, > U+10FFFF, truncated).
size_t Utf8Length(absl::string_view text, size_t i) {
  const auto b = [&](size_t k) { return static_cast<unsigned char>(text[k]); };
  const unsigned char c = b(i);
  if (c < 0x80) return 1;
  size_t n;
  unsigned char lo = 0x80, hi = 0xbf;
  if (c >= 0xc2 && c <= 0xdf) {
    n = 2;
  } else if (c >= 0xe0 && c <= 0xef) {
    n = 3;
    if (c == 0xe0) lo = 0xa0;
    if (c == 0xed) hi = 0x9f;
  } else if (c >= 0xf0 && c <= 0xf4) {
    n = 4;
    if (c == 0xf0) lo = 0x90;
    if (c == 0xf4) hi = 0x8f;
  } else {
    return 0;
  }
  if (i + n > text.size()) return 0;
  if (b(i + 1) < lo || b(i + 1) > hi) return 0;
  for (size_t k = 2; k < n; ++k) {
    if (b(i + k) < 0x80 || b(i + k) > 0xbf) return 0;
  }
  return n;
}

}  // namespace

std::string Quote(absl::string_view value, size_t max_bytes) {
  std::string out = "'";
  size_t i = 0;
  while (i < value.size() && i < max_bytes) {
    const unsigned char c = static_cast<unsigned char>(value[i]);
    const size_t n = Utf8Length(value, i);
    if (n == 0 || c < 0x20 || c == 0x7f) {
      absl::StrAppendFormat(&out, "\\x%02x", c);
      ++i;
      continue;
    }
    if (i + n > max_bytes) break;  // never split a character
    out.append(value.data() + i, n);
    i += n;
  }
  out += "'";
  if (i < value.size()) absl::StrAppend(&out, "... (", value.size(), " bytes)");
  return out;
}

}  // namespace tailor
