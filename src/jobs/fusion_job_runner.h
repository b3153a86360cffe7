#ifndef TAILOR_JOBS_FUSION_JOB_RUNNER_H_
#define TAILOR_JOBS_FUSION_JOB_RUNNER_H_

// The engine-backed JobRunner. Defined in fusion_job_runner.cc, the one
// jobs/ file that sees LibTorch (target tailor_jobs_fusion); this header
// itself is torch-free.

#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "jobs/job_runner.h"
#include "storage/uri_resolver.h"

namespace tailor::jobs {

// The engine-backed runner (RunFusionJob) over URIs inside `allowed_roots`.
// No output may overlap `protected_paths` (tailord passes its data
// directory), nor be or contain an allowed root.
//
// `remote` (issue #16): the object store provider serving remote URIs
// (admitted by remote allowed roots, s3://bucket/prefix/), the read cache,
// and the scratch directory remote outputs are staged in (tailord: under its
// data directory, which is also protected).
absl::StatusOr<std::unique_ptr<JobRunner>> NewFusionJobRunner(
    const std::vector<std::string>& allowed_roots,
    const std::vector<std::string>& protected_paths = {},
    UriResolver::Remote remote = {});

}  // namespace tailor::jobs

#endif  // TAILOR_JOBS_FUSION_JOB_RUNNER_H_
