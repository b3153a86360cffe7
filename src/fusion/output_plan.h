#ifndef TAILOR_FUSION_OUTPUT_PLAN_H_
#define TAILOR_FUSION_OUTPUT_PLAN_H_

#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "fusion/fusion_spec.h"
#include "storage/uri_resolver.h"

namespace tailor {

// Where a job's outputs go, checked as a whole (issue #10): the same check
// runs when a job is created (JobRunner::Prepare) and again when it runs
// (after its inputs are open, with every file they really read).
struct OutputPlan {
  struct Entry {
    std::string field;  // the spec field, for messages ("out", "patch_out")
    std::string path;   // canonical local path
    bool directory = false;  // outputs: what is written there
  };
  std::vector<Entry> outputs;  // fused dir, patches, report
  std::vector<Entry> inputs;   // every input file or directory
};

// Whether RunFusionJob writes one patch per task next to the stitched one.
bool WritesTaskPatches(const FusionSpec& spec);
// Task i's label: its own, or "task<i>".
std::string TaskLabel(const FusionSpec& spec, size_t i);
// "<stem>.<label>.safetensors" beside the stitched patch.
std::string TaskPatchPath(const std::string& stitched,
                          const std::string& label);

// Resolves every URI of `spec` (inputs must exist, outputs may not), with
// errors naming the field. Per-task patch paths are derived from patch_out.
// Without `with_inputs` only the outputs are resolved.
absl::StatusOr<OutputPlan> ResolveOutputPlan(const FusionSpec& spec,
                                             const UriResolver& resolver,
                                             bool with_inputs = true);

// The rules, in order, for each output (PERMISSION_DENIED or
// INVALID_ARGUMENT naming the field and the rule):
//   - it is not an allowed root and contains none (replacing it would
//     replace the root's contents; PERMISSION_DENIED);
//   - it does not overlap (equal, ancestor or descendant) a protected path
//     such as the server's data directory (PERMISSION_DENIED);
//   - it does not overlap any input of the job, nor another output;
//   - an existing entry there is of the kind written (a directory for the
//     fused checkpoint, a regular file for patches and the report).
absl::Status CheckOutputPlan(const OutputPlan& plan,
                             const UriResolver& resolver);

// Every output path of the plan with its staging-name parents, for
// RemoveStaleStaging: (parent directory, final names).
std::vector<std::pair<std::string, std::vector<std::string>>> StagingDirs(
    const OutputPlan& plan);

// Issue #17 point 1: creates the missing parent directories of every output
// (as `mkdir -p`, beneath the allowed root that holds it:
// UriResolver::MakeParentDirectories), errors naming the field. Called
// before a job (or `fuse --local`) runs.
absl::Status MakeOutputParents(const OutputPlan& plan,
                               const UriResolver& resolver);

}  // namespace tailor

#endif  // TAILOR_FUSION_OUTPUT_PLAN_H_
