#ifndef TAILOR_UTIL_JSON_UTIL_H_
#define TAILOR_UTIL_JSON_UTIL_H_

#include <cstddef>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "nlohmann/json.hpp"

namespace tailor {

// Returns the offset of the first byte that breaks UTF-8 (overlong forms,
// surrogates and code points above U+10FFFF included), or npos if `text` is
// valid.
size_t FindInvalidUtf8(absl::string_view text);

// Parses a small JSON document (a config or index file) strictly: valid
// UTF-8, one value, no duplicate keys in any object. Errors are
// INVALID_ARGUMENT naming `label` and the rule.
absl::StatusOr<nlohmann::json> ParseJsonStrict(absl::string_view text,
                                               absl::string_view label);

// j.dump(indent) without the exception: nlohmann throws (type_error 316)
// on a string that is not UTF-8. Such a failure is INVALID_ARGUMENT
// "<what>: <nlohmann's message>".
absl::StatusOr<std::string> DumpJson(const nlohmann::json& j,
                                     absl::string_view what, int indent = -1);

}  // namespace tailor

#endif  // TAILOR_UTIL_JSON_UTIL_H_
