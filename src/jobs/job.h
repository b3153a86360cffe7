#ifndef TAILOR_JOBS_JOB_H_
#define TAILOR_JOBS_JOB_H_

// The job resource of the service core: a fusion job's record and its
// events. Plain values, torch-free and RPC-free; the server maps them to
// tailor.v1 messages.

#include <cstdint>
#include <map>
#include <optional>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "nlohmann/json.hpp"

namespace tailor::jobs {

// Numbered as tailor.v1.State.
enum class JobState {
  kUnspecified = 0,
  kQueued = 1,
  kRunning = 2,
  kSucceeded = 3,
  kFailed = 4,
  kCancelled = 5,
};
// "QUEUED", "RUNNING", ...
absl::string_view JobStateName(JobState state);
// The inverse of JobStateName; nullopt for anything else.
std::optional<JobState> ParseJobState(absl::string_view name);
bool IsTerminal(JobState state);

// Progress of a running job (tensors and base-checkpoint bytes).
struct JobProgress {
  int64_t tensors_done = 0;
  int64_t tensors_total = 0;
  uint64_t bytes_done = 0;
  uint64_t bytes_total = 0;
  double elapsed_seconds = 0;
  double eta_seconds = -1;  // -1: unknown
  std::string tensor;       // the tensor just finished, if any
  std::string action;       // "fused" | "copied" for tensor events
};

// One event of a job; `sequence` is 1, 2, 3, ... per job without gaps.
struct JobEvent {
  enum class Kind { kStateChange, kProgress, kWarning };
  int64_t sequence = 0;
  absl::Time time;
  Kind kind = Kind::kStateChange;
  // kStateChange
  JobState state = JobState::kUnspecified;
  int error_code = 0;  // absl::StatusCode number, for kFailed/kCancelled
  std::string error_message;
  nlohmann::json result;  // kSucceeded: the result summary (see Job)
  // kProgress
  JobProgress progress;
  // kWarning
  std::string warning;

  nlohmann::json ToJson() const;
  static absl::StatusOr<JobEvent> FromJson(const nlohmann::json& json);
};

// A job. `name` is "fusionJobs/<id>".
struct Job {
  std::string id;  // 16 lower-case hex digits
  std::string request_id;
  // The principal that created the job (jobs::Caller::principal); "" for
  // jobs created without authentication and for jobs stored before
  // creators were recorded (visible to admins only once authentication is
  // on). request_id is unique per creator.
  std::string creator;
  nlohmann::json spec;  // canonical (FusionSpec::ToJson plus overwrite)
  int priority = 0;     // 0..9, higher first
  std::map<std::string, std::string> labels;
  // The request as JSON (spec, priority, labels): equal fingerprints make a
  // repeated request_id idempotent.
  std::string fingerprint;
  int64_t create_order = 0;  // increasing in creation order
  JobState state = JobState::kUnspecified;
  absl::Time create_time = absl::InfinitePast();
  absl::Time start_time = absl::InfinitePast();  // InfinitePast: unset
  absl::Time end_time = absl::InfinitePast();
  JobProgress progress;
  int error_code = 0;
  std::string error_message;
  bool cancel_requested = false;
  // Runs started (RUNNING recorded) that have not ended since: a run that
  // ends (a final state, or QUEUED again after a drain) sets it back to 0,
  // so a count above 0 at startup means the server died while the job ran.
  // Counted durably before each run, so a job that crashes the server on
  // every run (a poisoned job) is recognised and not retried forever.
  int unfinished_runs = 0;
  int64_t last_sequence = 0;
  // SUCCEEDED: {method, totals..., outputs{fused, patch, report}} from the
  // engine's report; null otherwise.
  nlohmann::json result;
  // SUCCEEDED: the full JSON report, byte for byte as the engine writes it.
  std::string report_text;

  std::string name() const { return "fusionJobs/" + id; }

  // Everything above, for the job store.
  nlohmann::json ToJson() const;
  static absl::StatusOr<Job> FromJson(const nlohmann::json& json);
};

constexpr absl::string_view kJobNamePrefix = "fusionJobs/";

// The id in "fusionJobs/<id>", or INVALID_ARGUMENT naming `field`.
absl::StatusOr<std::string> JobIdFromName(absl::string_view name,
                                          absl::string_view field = "name");

}  // namespace tailor::jobs

#endif  // TAILOR_JOBS_JOB_H_
