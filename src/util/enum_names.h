#ifndef TAILOR_UTIL_ENUM_NAMES_H_
#define TAILOR_UTIL_ENUM_NAMES_H_

#include <string>
#include <utility>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"

namespace tailor {

// The value spelled `text`, or INVALID_ARGUMENT "<field> must be one of
// a|b|c, not '<text>'".
template <typename E, size_t N>
absl::StatusOr<E> ParseEnumName(
    absl::string_view text, absl::string_view field,
    const std::pair<absl::string_view, E> (&table)[N]) {
  std::string allowed;
  for (const auto& [name, value] : table) {
    if (name == text) return value;
    absl::StrAppend(&allowed, allowed.empty() ? "" : "|", name);
  }
  return absl::InvalidArgumentError(
      absl::StrCat(field, " must be one of ", allowed, ", not '", text, "'"));
}

// The spelling of `value` ("?" if the table lacks it).
template <typename E, size_t N>
absl::string_view EnumName(E value,
                           const std::pair<absl::string_view, E> (&table)[N]) {
  for (const auto& [name, v] : table) {
    if (v == value) return name;
  }
  return "?";
}

}  // namespace tailor

#endif  // TAILOR_UTIL_ENUM_NAMES_H_
