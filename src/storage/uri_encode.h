#ifndef TAILOR_STORAGE_URI_ENCODE_H_
#define TAILOR_STORAGE_URI_ENCODE_H_

#include <string>

#include "absl/strings/string_view.h"

namespace tailor {

// Percent-encodes `text` the way AWS Signature Version 4 canonicalises a
// URI path or query component: every byte but the unreserved characters
// A-Z a-z 0-9 '-' '.' '_' '~' becomes %XX (upper-case hex), a space is
// "%20" (never '+'), and '/' is kept when `keep_slash` (S3 object keys in
// a path). Used for the wire URL too, so the canonical and sent URIs are
// the same bytes.
std::string UriEncode(absl::string_view text, bool keep_slash);

}  // namespace tailor

#endif  // TAILOR_STORAGE_URI_ENCODE_H_
