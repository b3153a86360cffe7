#include "jobs/run_outcome.h"

#include <cstdint>
#include <utility>

#include "absl/strings/ascii.h"

namespace tailor::jobs {

JobEvent StateEvent(JobState state, const absl::Status& status,
                    nlohmann::json result) {
  JobEvent e;
  e.kind = JobEvent::Kind::kStateChange;
  e.state = state;
  e.error_code = static_cast<int>(status.code());
  e.error_message = std::string(status.message());
  e.result = std::move(result);
  return e;
}

std::string OutcomeLabel(JobState state) {
  return absl::AsciiStrToLower(JobStateName(state));
}

nlohmann::json Summary(const nlohmann::json& report,
                       const nlohmann::json& spec) {
  nlohmann::json s = report.value("totals", nlohmann::json::object());
  s["method"] = report.value("method", "");
  s["fused"] = spec.value("out", "");
  s["patch"] = spec.value("patch_out", "");
  s["report"] = spec.value("report", "");
  // The patch as published, pinned (issue #10 point 4): GetResult serves
  // exactly these bytes or an error.
  const nlohmann::json outputs =
      report.value("outputs", nlohmann::json::object());
  if (outputs.contains("patch_sha256")) {
    s["patch_sha256"] = outputs["patch_sha256"];
    s["patch_bytes"] = outputs.value("patch_bytes", uint64_t{0});
  }
  return s;
}

RunOutcome ClassifyRun(const absl::StatusOr<nlohmann::json>& report,
                       const nlohmann::json& spec, bool interrupted,
                       bool user_cancel) {
  RunOutcome o;
  if (report.ok()) {
    o.state = JobState::kSucceeded;
    o.report_text = report->dump(2) + "\n";
    o.summary = Summary(*report, spec);
    o.event = StateEvent(o.state, absl::OkStatus(), o.summary);
  } else if (report.status().code() == absl::StatusCode::kCancelled &&
             interrupted && !user_cancel) {
    o.state = JobState::kQueued;
    o.event = StateEvent(
        o.state,
        absl::UnavailableError(
            "interrupted by a server shutdown; runs again after the restart"));
  } else {
    o.state = report.status().code() == absl::StatusCode::kCancelled
                  ? JobState::kCancelled
                  : JobState::kFailed;
    o.event = StateEvent(o.state, report.status());
  }
  return o;
}

}  // namespace tailor::jobs
