#include "jobs/job_filter.h"

#include <optional>
#include <utility>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "util/field_error.h"
#include "util/fnv1a.h"

namespace tailor::jobs {

absl::StatusOr<JobFilter> ParseJobFilter(const std::string& text) {
  JobFilter f;
  if (absl::StripAsciiWhitespace(text).empty()) return f;
  std::set<std::string> terms;
  for (absl::string_view term : absl::StrSplit(text, " AND ")) {
    term = absl::StripAsciiWhitespace(term);
    std::pair<std::string, std::string> kv =
        absl::StrSplit(term, absl::MaxSplits('=', 1));
    std::string key(absl::StripAsciiWhitespace(kv.first));
    std::string value(absl::StripAsciiWhitespace(kv.second));
    if (key == "state") {
      std::optional<JobState> state = ParseJobState(value);
      if (!state || *state == JobState::kUnspecified) {
        return FieldError(
            "filter",
            absl::StrCat("unknown state '", value.substr(0, 64),
                         "' (QUEUED, RUNNING, SUCCEEDED, FAILED, CANCELLED)"));
      }
      f.states.insert(*state);
    } else if (absl::StartsWith(key, "labels.") && key.size() > 7 &&
               term.find('=') != absl::string_view::npos) {
      f.labels[key.substr(7)].insert(value);
    } else {
      return FieldError("filter",
                        absl::StrCat("term '", term.substr(0, 128),
                                     "' is not state=STATE or labels.KEY=VALUE "
                                     "(terms are joined by ' AND ')"));
    }
    terms.insert(absl::StrCat(key, "=", value));
  }
  f.canonical = absl::StrJoin(terms, " AND ");
  return f;
}

bool JobFilter::Matches(const Job& job) const {
  for (JobState s : states) {
    if (job.state != s) return false;
  }
  for (const auto& [k, values] : labels) {
    auto it = job.labels.find(k);
    for (const std::string& v : values) {
      if (it == job.labels.end() || it->second != v) return false;
    }
  }
  return true;
}

std::string PageToken(const JobFilter& filter, int64_t before) {
  return absl::WebSafeBase64Escape(
      absl::StrFormat("t1:%016x:%d", Fnv1a(filter.canonical), before));
}

absl::StatusOr<int64_t> ParsePageToken(const JobFilter& filter,
                                       const std::string& token) {
  const absl::Status bad =
      FieldError("page_token", "is not a token this server returned");
  std::string text;
  if (token.size() > 256 || !absl::WebSafeBase64Unescape(token, &text)) {
    return bad;
  }
  std::vector<std::string> parts = absl::StrSplit(text, ':');
  int64_t before = 0;
  if (parts.size() != 3 || parts[0] != "t1" ||
      !absl::SimpleAtoi(parts[2], &before) || before <= 0) {
    return bad;
  }
  if (parts[1] != absl::StrFormat("%016x", Fnv1a(filter.canonical))) {
    return FieldError("page_token",
                      "was issued for another filter; a page token must come "
                      "with the filter of the request that returned it");
  }
  return before;
}

}  // namespace tailor::jobs
