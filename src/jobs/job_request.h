#ifndef TAILOR_JOBS_JOB_REQUEST_H_
#define TAILOR_JOBS_JOB_REQUEST_H_

// A request to create a job, the checks on it that need no runner, and job
// ids (JobManager::CreateJob).

#include <map>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"
#include "nlohmann/json.hpp"

namespace tailor::jobs {

struct CreateJobRequest {
  nlohmann::json spec;  // FusionSpec::FromJson form
  int priority = 0;     // 0..9
  std::map<std::string, std::string> labels;
  std::string request_id;  // optional idempotency key
};

// priority in 0..9; request_id at most 36 printable ASCII characters
// without spaces; at most 16 labels, keys and values 1 to 63 characters of
// a-z, 0-9, '_' and '-'. INVALID_ARGUMENT naming the field and the rule.
// (The spec is the runner's to check: JobRunner::Prepare.)
absl::Status CheckCreateJobRequest(const CreateJobRequest& request);

// A new random job id: 16 lowercase hex digits. Thread-safe. Unique only
// with high probability: the caller checks it against the ids it has.
std::string NewJobId();

// Component-wise: canonical paths `a` and `b` are equal or one contains
// the other.
bool PathsOverlap(absl::string_view a, absl::string_view b);

// (field, canonical path) of each output of a spec (JobRunner::OutputPaths).
using OutputPaths = std::vector<std::pair<std::string, std::string>>;

// FAILED_PRECONDITION naming the field, both paths and `other` when an
// output in `mine` overlaps one of `theirs`, the outputs of job `other`
// (queued or running): two active jobs never write the same output.
absl::Status CheckOutputsDisjoint(const OutputPaths& mine,
                                  const OutputPaths& theirs,
                                  absl::string_view other);

// Issue #17 point 1, checked when a job is created (and again, by the
// staged outputs, when it runs): an output that already exists is
// ALREADY_EXISTS naming the field and `overwrite` unless `overwrite`; one
// whose nearest existing ancestor is not a directory is INVALID_ARGUMENT.
// Missing parent directories are fine: the run creates them (beneath the
// allowed root, UriResolver::MakeParentDirectories).
absl::Status CheckOutputsCreatable(const OutputPaths& outputs, bool overwrite);

}  // namespace tailor::jobs

#endif  // TAILOR_JOBS_JOB_REQUEST_H_
