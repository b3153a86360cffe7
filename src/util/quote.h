#ifndef TAILOR_UTIL_QUOTE_H_
#define TAILOR_UTIL_QUOTE_H_

#include <cstddef>
#include <string>

#include "absl/strings/string_view.h"

namespace tailor {

// How much of one user-supplied value (a URI, a filter pattern, a label, a
// tensor name, ...) an error message may echo.
inline constexpr size_t kMaxQuotedBytes = 200;

// `value` in single quotes, for error messages: at most `max_bytes` of it
// (cut at a UTF-8 character boundary), followed by "... (N bytes)" when it
// was longer. Control characters and bytes that are not valid UTF-8 are
// written as \xNN, so the result is always one line of valid UTF-8 and a
// hostile value cannot grow an error message past a few hundred bytes.
std::string Quote(absl::string_view value, size_t max_bytes = kMaxQuotedBytes);

}  // namespace tailor

#endif  // TAILOR_UTIL_QUOTE_H_
