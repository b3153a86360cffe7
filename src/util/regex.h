#ifndef TAILOR_UTIL_REGEX_H_
#define TAILOR_UTIL_REGEX_H_

#include <cstddef>
#include <cstdint>
#include <memory>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace re2 {
class RE2;
}

namespace tailor {

// Regular expressions from users and from files (spec include/exclude
// filters, PEFT rank_pattern / alpha_pattern keys) are RE2 patterns: RE2
// compiles into bounded memory and matches in time linear in the text, so no
// pattern can overflow the stack or run for ever (std::regex does both).
// RE2 has no backreferences or lookaround; such patterns are refused.

// Longest pattern accepted, bytes.
inline constexpr size_t kMaxRegexLength = 1000;
// Memory RE2 may use for one compiled pattern (program and DFA caches).
inline constexpr int64_t kMaxRegexMemory = 8 << 20;

// A compiled RE2 pattern. Copyable (shares the immutable program);
// thread-safe.
class Regex {
 public:
  // Matches nothing.
  Regex() = default;

  // INVALID_ARGUMENT "<field>: '<pattern>' ..." when `pattern` is longer
  // than kMaxRegexLength, is not valid RE2 syntax (with RE2's reason), or
  // needs more than kMaxRegexMemory. The pattern is echoed bounded.
  static absl::StatusOr<Regex> Compile(absl::string_view pattern,
                                       absl::string_view field);

  // True if the pattern matches somewhere in `text` (std::regex_search,
  // Python's re.search).
  bool Search(absl::string_view text) const;
  // True if the pattern matches all of `text` (Python's re.fullmatch).
  bool FullMatch(absl::string_view text) const;

 private:
  explicit Regex(std::shared_ptr<const re2::RE2> re) : re_(std::move(re)) {}
  std::shared_ptr<const re2::RE2> re_;
};

}  // namespace tailor

#endif  // TAILOR_UTIL_REGEX_H_
