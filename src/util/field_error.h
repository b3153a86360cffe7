#ifndef TAILOR_UTIL_FIELD_ERROR_H_
#define TAILOR_UTIL_FIELD_ERROR_H_

// The one form of a bad-input error: INVALID_ARGUMENT "<field>: <rule>",
// where `field` names what the caller sent (a spec key, a request field, a
// setting) and `rule` says what it broke. Callers bound any user text they
// put in either (Quote, substr).

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"

namespace tailor {

inline absl::Status FieldError(absl::string_view field,
                               absl::string_view rule) {
  return absl::InvalidArgumentError(absl::StrCat(field, ": ", rule));
}

}  // namespace tailor

#endif  // TAILOR_UTIL_FIELD_ERROR_H_
