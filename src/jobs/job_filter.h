#ifndef TAILOR_JOBS_JOB_FILTER_H_
#define TAILOR_JOBS_JOB_FILTER_H_

// ListJobs' filter and page tokens (JobManager::ListJobs).

#include <cstdint>
#include <map>
#include <set>
#include <string>

#include "absl/status/statusor.h"
#include "jobs/job.h"

namespace tailor::jobs {

// A parsed filter: every term must hold. Terms on the same key AND too, so
// two different values of one key match nothing.
struct JobFilter {
  std::set<JobState> states;
  std::map<std::string, std::set<std::string>> labels;
  // The terms, sorted: equal for filters that mean the same.
  std::string canonical;

  // Every term holds for `job`.
  bool Matches(const Job& job) const;
};

// Terms joined by " AND ", each `state=STATE` or `labels.KEY=VALUE`
// (white space around terms, keys and values is ignored); empty or blank
// text is the filter that matches every job. INVALID_ARGUMENT naming
// "filter" and the bad term (quoted up to a bounded length).
absl::StatusOr<JobFilter> ParseJobFilter(const std::string& text);

// A page token: continue below create_order `before` under `filter`
// (web-safe base64 of "t1:<filter hash>:<before>").
std::string PageToken(const JobFilter& filter, int64_t before);

// The `before` of a token PageToken(filter, before) returned, > 0.
// INVALID_ARGUMENT naming "page_token" for anything else, and for a token
// issued under a different filter.
absl::StatusOr<int64_t> ParsePageToken(const JobFilter& filter,
                                       const std::string& token);

}  // namespace tailor::jobs

#endif  // TAILOR_JOBS_JOB_FILTER_H_
