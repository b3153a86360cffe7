#include "jobs/job.h"

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"

namespace tailor::jobs {
namespace {

constexpr std::pair<JobState, absl::string_view> kStates[] = {
    {JobState::kUnspecified, "STATE_UNSPECIFIED"},
    {JobState::kQueued, "QUEUED"},
    {JobState::kRunning, "RUNNING"},
    {JobState::kSucceeded, "SUCCEEDED"},
    {JobState::kFailed, "FAILED"},
    {JobState::kCancelled, "CANCELLED"}};

constexpr std::pair<JobEvent::Kind, absl::string_view> kKinds[] = {
    {JobEvent::Kind::kStateChange, "state_change"},
    {JobEvent::Kind::kProgress, "progress"},
    {JobEvent::Kind::kWarning, "warning"}};

nlohmann::json ProgressToJson(const JobProgress& p) {
  return {{"tensors_done", p.tensors_done},
          {"tensors_total", p.tensors_total},
          {"bytes_done", p.bytes_done},
          {"bytes_total", p.bytes_total},
          {"elapsed_seconds", p.elapsed_seconds},
          {"eta_seconds", p.eta_seconds},
          {"tensor", p.tensor},
          {"action", p.action}};
}

JobProgress ProgressFromJson(const nlohmann::json& j) {
  JobProgress p;
  p.tensors_done = j.value("tensors_done", int64_t{0});
  p.tensors_total = j.value("tensors_total", int64_t{0});
  p.bytes_done = j.value("bytes_done", uint64_t{0});
  p.bytes_total = j.value("bytes_total", uint64_t{0});
  p.elapsed_seconds = j.value("elapsed_seconds", 0.0);
  p.eta_seconds = j.value("eta_seconds", -1.0);
  p.tensor = j.value("tensor", "");
  p.action = j.value("action", "");
  return p;
}

}  // namespace

absl::string_view JobStateName(JobState state) {
  for (const auto& [s, name] : kStates) {
    if (s == state) return name;
  }
  return "STATE_UNSPECIFIED";
}

std::optional<JobState> ParseJobState(absl::string_view name) {
  for (const auto& [s, n] : kStates) {
    if (n == name) return s;
  }
  return std::nullopt;
}

bool IsTerminal(JobState state) {
  return state == JobState::kSucceeded || state == JobState::kFailed ||
         state == JobState::kCancelled;
}

nlohmann::json JobEvent::ToJson() const {
  nlohmann::json j = {{"sequence", sequence},
                      {"time_us", absl::ToUnixMicros(time)}};
  for (const auto& [k, name] : kKinds) {
    if (k == kind) j["kind"] = std::string(name);
  }
  switch (kind) {
    case Kind::kStateChange:
      j["state"] = std::string(JobStateName(state));
      j["error_code"] = error_code;
      j["error_message"] = error_message;
      j["result"] = result;
      break;
    case Kind::kProgress:
      j["progress"] = ProgressToJson(progress);
      break;
    case Kind::kWarning:
      j["warning"] = warning;
      break;
  }
  return j;
}

absl::StatusOr<JobEvent> JobEvent::FromJson(const nlohmann::json& j) {
  try {
    JobEvent e;
    e.sequence = j.at("sequence").get<int64_t>();
    e.time = absl::FromUnixMicros(j.at("time_us").get<int64_t>());
    const std::string kind = j.at("kind").get<std::string>();
    bool known = false;
    for (const auto& [k, name] : kKinds) {
      if (name == kind) {
        e.kind = k;
        known = true;
      }
    }
    if (!known) {
      return absl::DataLossError(absl::StrCat("unknown event kind ", kind));
    }
    if (e.kind == Kind::kStateChange) {
      std::optional<JobState> s =
          ParseJobState(j.at("state").get<std::string>());
      if (!s) return absl::DataLossError("unknown state in event");
      e.state = *s;
      e.error_code = j.value("error_code", 0);
      e.error_message = j.value("error_message", "");
      e.result = j.value("result", nlohmann::json());
    } else if (e.kind == Kind::kProgress) {
      e.progress = ProgressFromJson(j.at("progress"));
    } else {
      e.warning = j.value("warning", "");
    }
    return e;
  } catch (const nlohmann::json::exception& ex) {
    return absl::DataLossError(
        absl::StrCat("malformed stored event: ", ex.what()));
  }
}

namespace {
int64_t TimeToJson(absl::Time t) {
  return t == absl::InfinitePast() ? 0 : absl::ToUnixMicros(t);
}
absl::Time TimeFromJson(int64_t us) {
  return us == 0 ? absl::InfinitePast() : absl::FromUnixMicros(us);
}
}  // namespace

nlohmann::json Job::ToJson() const {
  return {{"id", id},
          {"request_id", request_id},
          {"creator", creator},
          {"spec", spec},
          {"priority", priority},
          {"labels", labels},
          {"fingerprint", fingerprint},
          {"create_order", create_order},
          {"state", std::string(JobStateName(state))},
          {"create_time_us", TimeToJson(create_time)},
          {"start_time_us", TimeToJson(start_time)},
          {"end_time_us", TimeToJson(end_time)},
          {"progress", ProgressToJson(progress)},
          {"error_code", error_code},
          {"error_message", error_message},
          {"cancel_requested", cancel_requested},
          {"unfinished_runs", unfinished_runs},
          {"last_sequence", last_sequence},
          {"result", result},
          {"report_text", report_text}};
}

absl::StatusOr<Job> Job::FromJson(const nlohmann::json& j) {
  try {
    Job job;
    job.id = j.at("id").get<std::string>();
    job.request_id = j.at("request_id").get<std::string>();
    job.creator = j.value("creator", "");  // absent before issue #14
    job.spec = j.at("spec");
    job.priority = j.at("priority").get<int>();
    job.labels = j.at("labels").get<std::map<std::string, std::string>>();
    job.fingerprint = j.at("fingerprint").get<std::string>();
    job.create_order = j.at("create_order").get<int64_t>();
    std::optional<JobState> state =
        ParseJobState(j.at("state").get<std::string>());
    if (!state) return absl::DataLossError("stored job has an unknown state");
    job.state = *state;
    job.create_time = TimeFromJson(j.at("create_time_us").get<int64_t>());
    job.start_time = TimeFromJson(j.at("start_time_us").get<int64_t>());
    job.end_time = TimeFromJson(j.at("end_time_us").get<int64_t>());
    job.progress = ProgressFromJson(j.at("progress"));
    job.error_code = j.at("error_code").get<int>();
    job.error_message = j.at("error_message").get<std::string>();
    job.cancel_requested = j.at("cancel_requested").get<bool>();
    job.unfinished_runs = j.value("unfinished_runs", 0);  // absent before
    job.last_sequence = j.at("last_sequence").get<int64_t>();
    job.result = j.at("result");
    job.report_text = j.at("report_text").get<std::string>();
    return job;
  } catch (const nlohmann::json::exception& ex) {
    return absl::DataLossError(
        absl::StrCat("malformed stored job: ", ex.what()));
  }
}

absl::StatusOr<std::string> JobIdFromName(absl::string_view name,
                                          absl::string_view field) {
  if (!absl::StartsWith(name, kJobNamePrefix)) {
    return absl::InvalidArgumentError(absl::StrCat(
        field, ": must look like 'fusionJobs/<id>', not '", name, "'"));
  }
  absl::string_view id = name.substr(kJobNamePrefix.size());
  bool ok = id.size() == 16;
  for (char c : id)
    ok = ok && absl::ascii_isxdigit(c) && !absl::ascii_isupper(c);
  if (!ok) {
    return absl::InvalidArgumentError(absl::StrCat(
        field, ": the job id must be 16 lower-case hex digits, not '", id,
        "'"));
  }
  return std::string(id);
}

}  // namespace tailor::jobs
