#ifndef TAILOR_STORAGE_PERCENT_DECODE_H_
#define TAILOR_STORAGE_PERCENT_DECODE_H_

#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace tailor {

// Decodes RFC 3986 percent escapes in `encoded` once ("%2e" -> "."). A '%'
// not followed by two hex digits, or an escape that decodes to NUL, is
// INVALID_ARGUMENT naming `uri` (the whole URI, for the message).
absl::StatusOr<std::string> PercentDecode(absl::string_view uri,
                                          absl::string_view encoded);

}  // namespace tailor

#endif  // TAILOR_STORAGE_PERCENT_DECODE_H_
