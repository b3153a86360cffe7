#ifndef TAILOR_CLIENT_JOB_OUTPUT_H_
#define TAILOR_CLIENT_JOB_OUTPUT_H_

#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "fusion/run_options.h"
#include "tailor/v1/fusion_service.pb.h"

namespace tailor::cli {

enum class OutputFormat { kTable, kJson, kYaml };
absl::StatusOr<OutputFormat> ParseOutputFormat(const std::string& text);

// Jobs as a table (NAME STATE PROGRESS PRIORITY CREATED MESSAGE), a JSON
// document, or YAML. JSON and YAML use the proto field names; a single job
// (`single`) is an object, several are {"fusion_jobs": [...]}.
std::string FormatJobs(const std::vector<tailor::v1::FusionJob>& jobs,
                       OutputFormat format, bool single,
                       const std::string& next_page_token = "");

// One event: a plain line (table format) or one line of JSON (json, yaml).
std::string FormatEvent(const tailor::v1::JobEvent& event, OutputFormat format);

// The server's progress as an engine ProgressEvent (for the progress bar).
ProgressEvent ToProgressEvent(const tailor::v1::JobEvent& event);

}  // namespace tailor::cli

#endif  // TAILOR_CLIENT_JOB_OUTPUT_H_
