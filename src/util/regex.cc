#include "util/regex.h"

#include <utility>

#include "absl/strings/str_cat.h"
#include "re2/re2.h"
#include "util/quote.h"

namespace tailor {

absl::StatusOr<Regex> Regex::Compile(absl::string_view pattern,
                                     absl::string_view field) {
  if (pattern.size() > kMaxRegexLength) {
    return absl::InvalidArgumentError(absl::StrCat(
        field, ": ", Quote(pattern), " is longer than the limit of ",
        kMaxRegexLength, " bytes for an RE2 regular expression"));
  }
  re2::RE2::Options options;
  options.set_log_errors(false);  // errors come back in the status
  options.set_max_mem(kMaxRegexMemory);
  auto re = std::make_shared<const re2::RE2>(
      re2::StringPiece(pattern.data(), pattern.size()), options);
  if (!re->ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat(field, ": ", Quote(pattern),
                     " is not a valid RE2 regular expression (RE2 syntax: no "
                     "backreferences or lookaround): ",
                     Quote(re->error())));
  }
  return Regex(std::move(re));
}

bool Regex::Search(absl::string_view text) const {
  if (re_ == nullptr) return false;
  return re2::RE2::PartialMatch(re2::StringPiece(text.data(), text.size()),
                                *re_);
}

bool Regex::FullMatch(absl::string_view text) const {
  if (re_ == nullptr) return false;
  return re2::RE2::FullMatch(re2::StringPiece(text.data(), text.size()), *re_);
}

}  // namespace tailor
