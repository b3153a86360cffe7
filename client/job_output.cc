#include "client/job_output.h"

#include <map>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/time/time.h"
#include "api/spec_convert.h"
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

std::string Time(const google::protobuf::Timestamp& t) {
  return absl::FormatTime(
      "%Y-%m-%dT%H:%M:%SZ",
      absl::FromUnixSeconds(t.seconds()) + absl::Nanoseconds(t.nanos()),
      absl::UTCTimeZone());
}

// A string field of `job` that this build's proto may not have yet (e.g.
// `creator`): "" when absent or empty.
std::string OptionalString(const v1::FusionJob& job, const char* field) {
  const google::protobuf::FieldDescriptor* f =
      job.GetDescriptor()->FindFieldByName(field);
  if (f == nullptr ||
      f->cpp_type() != google::protobuf::FieldDescriptor::CPPTYPE_STRING ||
      f->is_repeated()) {
    return "";
  }
  return job.GetReflection()->GetString(job, f);
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
  if (text == "job") return OutputFormat::kJob;
  return absl::InvalidArgumentError(
      absl::StrCat("-o must be table, json, yaml or job, not '", text, "'"));
}

std::string FormatJobFile(const v1::FusionJobSpec& spec) {
  YAML::Emitter out;
  EmitYaml(api::SpecToJson(spec), out);
  return absl::StrCat(
      "# A tailorctl job file (tailorctl submit -f FILE); paths as the server "
      "resolved them.\n",
      out.c_str(), "\n");
}

std::string FormatJobDetail(const v1::FusionJob& job) {
  std::string out;
  auto line = [&](absl::string_view key, absl::string_view value) {
    absl::StrAppend(
        &out, absl::StrFormat("%-12s %s\n", absl::StrCat(key, ":"), value));
  };
  line("Name", job.name());
  line("State",
       absl::StrCat(v1::State_Name(job.state()),
                    job.cancel_requested() ? " (cancel requested)" : ""));
  line("Priority", absl::StrCat(job.priority()));
  if (!job.labels().empty()) {
    std::map<std::string, std::string> sorted(job.labels().begin(),
                                              job.labels().end());
    line("Labels", absl::StrJoin(sorted, ",", absl::PairFormatter("=")));
  }
  if (!job.request_id().empty()) line("Request ID", job.request_id());
  if (const std::string creator = OptionalString(job, "creator");
      !creator.empty()) {
    line("Creator", creator);
  }
  if (job.has_create_time()) line("Created", Time(job.create_time()));
  if (job.has_start_time()) line("Started", Time(job.start_time()));
  if (job.has_end_time()) line("Ended", Time(job.end_time()));
  const v1::Progress& p = job.progress();
  if (p.tensors_total() > 0) {
    std::string text =
        absl::StrCat(p.tensors_done(), "/", p.tensors_total(), " tensors");
    if (p.bytes_total() > 0) {
      absl::StrAppend(&text,
                      absl::StrFormat(", %.0f%% of base bytes (%d of %d)",
                                      100.0 * p.bytes_done() /
                                          static_cast<double>(p.bytes_total()),
                                      p.bytes_done(), p.bytes_total()));
    }
    if (p.elapsed_seconds() > 0) {
      absl::StrAppend(&text,
                      absl::StrFormat(", %.1f s elapsed", p.elapsed_seconds()));
    }
    line("Progress", text);
  }
  if (job.error_code() != 0 || !job.error_message().empty()) {
    line("Error",
         absl::StrCat(absl::StatusCodeToString(
                          static_cast<absl::StatusCode>(job.error_code())),
                      ": ", job.error_message()));
  }
  if (job.has_result()) {
    const v1::ResultSummary& r = job.result();
    line("Result", absl::StrFormat(
                       "method %s, %d tensors fused, %d copied, kept %d of "
                       "%d entries (%.4f), %.2f s",
                       r.method(), r.tensors_fused(), r.tensors_copied(),
                       r.kept(), r.entries(), r.kept_fraction(), r.seconds()));
  }
  absl::StrAppend(&out, "Spec (tailorctl get ", job.name(), " -o job):\n");
  YAML::Emitter spec;
  EmitYaml(api::SpecToJson(job.spec()), spec);
  for (absl::string_view l : absl::StrSplit(spec.c_str(), '\n')) {
    absl::StrAppend(&out, "  ", l, "\n");
  }
  return out;
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
          &line, absl::StrFormat(", %.0f%% of base bytes",
                                 100.0 * p.bytes_done() /
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
