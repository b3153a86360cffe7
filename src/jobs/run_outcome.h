#ifndef TAILOR_JOBS_RUN_OUTCOME_H_
#define TAILOR_JOBS_RUN_OUTCOME_H_

// What a run's end means for its job: the state it goes to and the state
// event that records it (JobManager::RunJob).

#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "jobs/job.h"
#include "nlohmann/json.hpp"

namespace tailor::jobs {

// A kStateChange event to `state`, with `status`'s code and message and
// `result` (a succeeded job's summary).
JobEvent StateEvent(JobState state, const absl::Status& status = {},
                    nlohmann::json result = nullptr);

// The metrics label of a state ("succeeded").
std::string OutcomeLabel(JobState state);

// The result summary of a report: its totals, method, the spec's output
// URIs (fused, patch, report) and the published patch's digest and size
// (GetResult serves exactly those bytes).
nlohmann::json Summary(const nlohmann::json& report,
                       const nlohmann::json& spec);

struct RunOutcome {
  // kSucceeded, kFailed, kCancelled; kQueued for a run the drain
  // interrupted (it runs again after the restart).
  JobState state = JobState::kFailed;
  JobEvent event;           // the state event to record
  std::string report_text;  // succeeded: the report, pretty-printed
  nlohmann::json summary;   // succeeded: Summary(report, spec)
};

// The outcome of a run of `spec` that returned `report`. CANCELLED is the
// drain's (back to QUEUED) when the run was `interrupted` by it and the user
// had not asked to cancel (`user_cancel`), else the user's (CANCELLED);
// other errors are FAILED.
RunOutcome ClassifyRun(const absl::StatusOr<nlohmann::json>& report,
                       const nlohmann::json& spec, bool interrupted,
                       bool user_cancel);

}  // namespace tailor::jobs

#endif  // TAILOR_JOBS_RUN_OUTCOME_H_
