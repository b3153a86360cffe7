// The bounded XML element extractor (storage/xml_extract.h).

#include "storage/xml_extract.h"

#include <cstdint>

#include "absl/status/status.h"
#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "util/quote.h"
#include "util/status_macros.h"

namespace tailor {
namespace {

absl::Status Bad(absl::string_view name, absl::string_view rule) {
  return absl::InvalidArgumentError(
      absl::StrCat("XML element <", name, ">: ", rule));
}

// Finds the next opening tag of `name` at or after `from`: "<name>",
// "<name attr...>" or "<name/>". Sets *content to the first byte after
// the tag and *empty for the self-closing form. npos when none.
size_t FindOpen(absl::string_view xml, absl::string_view name, size_t from,
                size_t* content, bool* empty) {
  const std::string open = absl::StrCat("<", name);
  size_t pos = from;
  while ((pos = xml.find(open, pos)) != absl::string_view::npos) {
    const size_t after = pos + open.size();
    if (after >= xml.size()) return absl::string_view::npos;
    const char c = xml[after];
    if (c == '>' || c == ' ' || c == '/' || c == '\t' || c == '\n' ||
        c == '\r') {
      const size_t close = xml.find('>', after);
      if (close == absl::string_view::npos) return absl::string_view::npos;
      *empty = xml[close - 1] == '/';
      *content = close + 1;
      return pos;
    }
    pos = after;
  }
  return absl::string_view::npos;
}

void AppendUtf8(uint32_t cp, std::string* out) {
  if (cp < 0x80) {
    out->push_back(static_cast<char>(cp));
  } else if (cp < 0x800) {
    out->push_back(static_cast<char>(0xC0 | (cp >> 6)));
    out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else if (cp < 0x10000) {
    out->push_back(static_cast<char>(0xE0 | (cp >> 12)));
    out->push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else {
    out->push_back(static_cast<char>(0xF0 | (cp >> 18)));
    out->push_back(static_cast<char>(0x80 | ((cp >> 12) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  }
}

}  // namespace

absl::StatusOr<std::vector<absl::string_view>> XmlElements(
    absl::string_view xml, absl::string_view name) {
  std::vector<absl::string_view> out;
  const std::string close = absl::StrCat("</", name, ">");
  size_t pos = 0;
  for (;;) {
    size_t content = 0;
    bool empty = false;
    const size_t open = FindOpen(xml, name, pos, &content, &empty);
    if (open == absl::string_view::npos) break;
    if (out.size() >= kMaxXmlElements) {
      return Bad(name, absl::StrCat("more than ", kMaxXmlElements));
    }
    if (empty) {
      out.push_back(absl::string_view());
      pos = content;
      continue;
    }
    const size_t end = xml.find(close, content);
    if (end == absl::string_view::npos) return Bad(name, "not terminated");
    absl::string_view inner = xml.substr(content, end - content);
    size_t nested_content = 0;
    bool nested_empty = false;
    if (FindOpen(inner, name, 0, &nested_content, &nested_empty) !=
        absl::string_view::npos) {
      return Bad(name, "nested in itself");
    }
    out.push_back(inner);
    pos = end + close.size();
  }
  return out;
}

absl::StatusOr<std::vector<std::string>> XmlTexts(absl::string_view xml,
                                                  absl::string_view name) {
  TAILOR_ASSIGN_OR_RETURN(std::vector<absl::string_view> raw,
                          XmlElements(xml, name));
  std::vector<std::string> out;
  out.reserve(raw.size());
  for (absl::string_view r : raw) {
    if (r.find('<') != absl::string_view::npos) {
      return Bad(name, "holds markup where text was expected");
    }
    absl::StatusOr<std::string> text = XmlDecodeEntities(r);
    if (!text.ok()) return Bad(name, text.status().message());
    out.push_back(*std::move(text));
  }
  return out;
}

absl::StatusOr<std::string> XmlFirstText(absl::string_view xml,
                                         absl::string_view name) {
  size_t content = 0;
  bool empty = false;
  const size_t open = FindOpen(xml, name, 0, &content, &empty);
  if (open == absl::string_view::npos || empty) return std::string();
  const std::string close = absl::StrCat("</", name, ">");
  const size_t end = xml.find(close, content);
  if (end == absl::string_view::npos) return Bad(name, "not terminated");
  absl::string_view inner = xml.substr(content, end - content);
  if (inner.find('<') != absl::string_view::npos) {
    return Bad(name, "holds markup where text was expected");
  }
  absl::StatusOr<std::string> text = XmlDecodeEntities(inner);
  if (!text.ok()) return Bad(name, text.status().message());
  return text;
}

absl::StatusOr<std::string> XmlDecodeEntities(absl::string_view text) {
  std::string out;
  out.reserve(text.size());
  for (size_t i = 0; i < text.size(); ++i) {
    if (text[i] != '&') {
      out.push_back(text[i]);
      continue;
    }
    const size_t semi = text.find(';', i);
    if (semi == absl::string_view::npos || semi - i > 12) {
      return absl::InvalidArgumentError("an unterminated '&' entity");
    }
    absl::string_view ent = text.substr(i + 1, semi - i - 1);
    if (ent == "amp") {
      out.push_back('&');
    } else if (ent == "lt") {
      out.push_back('<');
    } else if (ent == "gt") {
      out.push_back('>');
    } else if (ent == "quot") {
      out.push_back('"');
    } else if (ent == "apos") {
      out.push_back('\'');
    } else if (ent.size() >= 2 && ent[0] == '#') {
      const bool hex = ent[1] == 'x' || ent[1] == 'X';
      absl::string_view digits = ent.substr(hex ? 2 : 1);
      if (digits.empty() || digits.size() > 8) {
        return absl::InvalidArgumentError("a malformed character reference");
      }
      uint32_t cp = 0;
      for (char c : digits) {
        int d;
        if (absl::ascii_isdigit(c)) {
          d = c - '0';
        } else if (hex && absl::ascii_isxdigit(c)) {
          d = absl::ascii_tolower(c) - 'a' + 10;
        } else {
          return absl::InvalidArgumentError("a malformed character reference");
        }
        cp = cp * (hex ? 16 : 10) + d;
      }
      if (cp == 0 || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) {
        return absl::InvalidArgumentError("a character reference out of range");
      }
      AppendUtf8(cp, &out);
    } else {
      return absl::InvalidArgumentError(
          absl::StrCat("an unknown entity ", Quote(ent, 16)));
    }
    i = semi;
  }
  return out;
}

std::string XmlEscape(absl::string_view text) {
  std::string out;
  for (char c : text) {
    switch (c) {
      case '&':
        out += "&amp;";
        break;
      case '<':
        out += "&lt;";
        break;
      case '>':
        out += "&gt;";
        break;
      case '"':
        out += "&quot;";
        break;
      case '\'':
        out += "&apos;";
        break;
      default:
        out.push_back(c);
    }
  }
  return out;
}

}  // namespace tailor
