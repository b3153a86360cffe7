#ifndef TAILOR_CLIENT_JOB_SPEC_JSON_H_
#define TAILOR_CLIENT_JOB_SPEC_JSON_H_

// Torch-free access to job files, for the gRPC side of tailorctl.

#include <string>

#include "absl/status/statusor.h"
#include "nlohmann/json.hpp"

namespace tailor::cli {

// LoadJobFile(path) (job_file.h) as the engine's JSON spec
// (FusionSpec::ToJson plus "overwrite"), validated like `fuse --local`
// validates it.
absl::StatusOr<nlohmann::json> LoadJobFileJson(const std::string& path);

}  // namespace tailor::cli

#endif  // TAILOR_CLIENT_JOB_SPEC_JSON_H_
