// RunFusionJob (fusion_job.h): the public entry of a fusion job. The run
// itself is FusionRun's (fusion_run.h, its steps in fusion_run_*.cc); here
// LibTorch's exceptions become a status.

#include "fusion/fusion_job.h"

#include "fusion/fusion_run.h"
#include "util/torch_status.h"

namespace tailor {

absl::StatusOr<nlohmann::json> RunFusionJob(const FusionSpec& spec,
                                            const UriResolver& resolver,
                                            const RunOptions& options) {
  fusion_internal::FusionRun run(spec, resolver, options);
  return CatchTorch("fusion job", [&] { return run.Run(); });
}

}  // namespace tailor
