#ifndef TAILOR_UTIL_SHA256_H_
#define TAILOR_UTIL_SHA256_H_

#include <string>

#include "absl/strings/string_view.h"

namespace tailor {

// sha256 of `bytes` as 64 lower-case hex digits.
std::string Sha256Hex(absl::string_view bytes);

}  // namespace tailor

#endif  // TAILOR_UTIL_SHA256_H_
