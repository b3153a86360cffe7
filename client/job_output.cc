#include "job_output.h"

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/time/time.h"
#include "google/protobuf/util/json_util.h"
#include "nlohmann/json.hpp"
#include "yaml-cpp/yaml.h"

namespace tailor::cli {
namespace {

namespace v1 = ::tailor::v1;

nlohmann::json ToJson(const google::protobuf::Message& m) {
  google::protobuf::util::JsonPrintOptions options;
  options.preserve_proto_field_names = true;
  std::string text;
  (void)google::protobuf::util::MessageToJsonString(m, &text, options);
  return nlohmann::json::parse(text, nullptr, false);
}

void EmitYaml(const nlohmann::json& j, YAML::Emitter& out) {
  if (j.is_object()) {
    out << YAML::BeginMap;
    for (const auto& [k, v] : j.items()) {
      out << YAML::Key << k << YAML::Value;
      EmitYaml(v, out);
    }
    out << YAML::EndMap;
  } else if (j.is_array()) {
    out << YAML::BeginSeq;
    for (const auto& v : j) EmitYaml(v, out);
    out << YAML::EndSeq;
  } else if (j.is_string()) {
    out << YAML::DoubleQuoted << j.get<std::string>();
  } else if (j.is_null()) {
    out << YAML::Null;
  } else {
    out << j.dump();
  }
}

std::string Created(const v1::FusionJob& job) {
  if (!job.has_create_time()) return "-";
  return absl::FormatTime("%Y-%m-%dT%H:%M:%SZ",
                          absl::FromUnixSeconds(job.create_time().seconds()),
                          absl::UTCTimeZone());
}

std::string ProgressText(const v1::Progress& p) {
  if (p.tensors_total() == 0) return "-";
  return absl::StrCat(p.tensors_done(), "/", p.tensors_total());
}

}  // namespace

absl::StatusOr<OutputFormat> ParseOutputFormat(const std::string& text) {
  if (text == "table") return OutputFormat::kTable;
  if (text == "json") return OutputFormat::kJson;
  if (text == "yaml") return OutputFormat::kYaml;
  return absl::InvalidArgumentError(
      absl::StrCat("-o must be table, json or yaml, not '", text, "'"));
}

std::string FormatJobs(const std::vector<v1::FusionJob>& jobs,
                       OutputFormat format, bool single,
                       const std::string& next_page_token) {
  if (format == OutputFormat::kTable) {
    std::string out =
        absl::StrFormat("%-28s %-10s %-9s %-3s %-20s %s\n", "NAME", "STATE",
                        "TENSORS", "PRI", "CREATED", "MESSAGE");
    for (const v1::FusionJob& job : jobs) {
      std::string message = job.error_message();
      if (job.state() == v1::SUCCEEDED && job.has_result()) {
        message = absl::StrFormat("kept %d of %d entries", job.result().kept(),
                                  job.result().entries());
      }
      absl::StrAppend(
          &out, absl::StrFormat("%-28s %-10s %-9s %-3d %-20s %s\n", job.name(),
                                v1::State_Name(job.state()),
                                ProgressText(job.progress()), job.priority(),
                                Created(job), message));
    }
    if (!next_page_token.empty()) {
      absl::StrAppend(&out, "(more: --page-token ", next_page_token, ")\n");
    }
    return out;
  }
  nlohmann::json doc;
  if (single && jobs.size() == 1) {
    doc = ToJson(jobs[0]);
  } else {
    doc["fusion_jobs"] = nlohmann::json::array();
    for (const v1::FusionJob& job : jobs) {
      doc["fusion_jobs"].push_back(ToJson(job));
    }
    if (!next_page_token.empty()) doc["next_page_token"] = next_page_token;
  }
  if (format == OutputFormat::kJson) return doc.dump(2) + "\n";
  YAML::Emitter out;
  EmitYaml(doc, out);
  return std::string(out.c_str()) + "\n";
}

std::string FormatEvent(const v1::JobEvent& e, OutputFormat format) {
  if (format != OutputFormat::kTable) return ToJson(e).dump() + "\n";
  std::string line = absl::StrCat("#", e.sequence(), " ");
  if (e.has_state_change()) {
    const v1::StateChange& s = e.state_change();
    absl::StrAppend(&line, v1::State_Name(s.state()));
    if (!s.error_message().empty()) {
      absl::StrAppend(&line, ": ", s.error_message());
    }
    if (s.state() == v1::SUCCEEDED) {
      absl::StrAppend(
          &line,
          absl::StrFormat(" (kept %d of %d entries, %.2f s)", s.result().kept(),
                          s.result().entries(), s.result().seconds()));
    }
  } else if (e.has_progress()) {
    const v1::Progress& p = e.progress();
    absl::StrAppend(&line,
                    absl::StrFormat("progress %d/%d tensors", p.tensors_done(),
                                    p.tensors_total()));
    if (p.bytes_total() > 0) {
      absl::StrAppend(
          &line,
          absl::StrFormat(" %.0f%%", 100.0 * p.bytes_done() /
                                         static_cast<double>(p.bytes_total())));
    }
    if (p.eta_seconds() >= 0) {
      absl::StrAppend(&line, absl::StrFormat(" ETA %.1f s", p.eta_seconds()));
    }
    if (!p.tensor().empty()) {
      absl::StrAppend(&line, " ", p.tensor(), " ", p.action());
    }
  } else {
    absl::StrAppend(&line, "warning: ", e.warning());
  }
  return line + "\n";
}

ProgressEvent ToProgressEvent(const v1::JobEvent& e) {
  ProgressEvent p;
  if (e.has_progress()) {
    p.kind = e.progress().tensor().empty() ? ProgressEvent::Kind::kPlanned
                                           : ProgressEvent::Kind::kTensorDone;
    p.tensor = e.progress().tensor();
    p.action = e.progress().action();
    p.done = e.progress().tensors_done();
    p.total = e.progress().tensors_total();
    p.bytes_done = e.progress().bytes_done();
    p.bytes_total = e.progress().bytes_total();
    p.elapsed_seconds = e.progress().elapsed_seconds();
  } else if (!e.warning().empty()) {
    p.kind = ProgressEvent::Kind::kWarning;
    p.message = e.warning();
  } else {
    p.kind = ProgressEvent::Kind::kFinished;
  }
  return p;
}

}  // namespace tailor::cli
