#ifndef TAILOR_CLIENT_JOB_OUTPUT_H_
#define TAILOR_CLIENT_JOB_OUTPUT_H_

#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "fusion/run_options.h"
#include "tailor/v1/fusion_service.pb.h"

namespace tailor::cli {

// kJob (`get -o job`): the job's spec as a job file (FormatJobFile).
enum class OutputFormat { kTable, kJson, kYaml, kJob };
absl::StatusOr<OutputFormat> ParseOutputFormat(const std::string& text);

// Jobs as a table (NAME STATE PROGRESS PRIORITY CREATED MESSAGE), a JSON
// document, or YAML. JSON and YAML use the proto field names; a single job
// (`single`) is an object, several are {"fusion_jobs": [...]}.
std::string FormatJobs(const std::vector<tailor::v1::FusionJob>& jobs,
                       OutputFormat format, bool single,
                       const std::string& next_page_token = "");

// `tailorctl get` in table format: one "Key: value" line per detail (name,
// state, priority, labels, request id, creator when the server reports
// one, timestamps, progress, error, result) and the spec as a job file.
std::string FormatJobDetail(const tailor::v1::FusionJob& job);

// The spec as a valid job file (YAML in the engine's form: `method:
// tailor`, plain numbers): `tailorctl submit -f` of it submits the same
// spec. Paths are the server's absolute ones.
std::string FormatJobFile(const tailor::v1::FusionJobSpec& spec);

// One event: a plain line (table format) or one line of JSON (json, yaml).
std::string FormatEvent(const tailor::v1::JobEvent& event, OutputFormat format);

// The server's progress as an engine ProgressEvent (for the progress bar).
ProgressEvent ToProgressEvent(const tailor::v1::JobEvent& event);

}  // namespace tailor::cli

#endif  // TAILOR_CLIENT_JOB_OUTPUT_H_
