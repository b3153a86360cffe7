#ifndef TAILOR_FUSION_FUSION_JOB_H_
#define TAILOR_FUSION_FUSION_JOB_H_

#include <atomic>
#include <cstdint>
#include <string>

#include "absl/status/statusor.h"
#include "fusion/fusion_spec.h"
#include "nlohmann/json.hpp"
#include "storage/uri_resolver.h"

namespace tailor {

// One progress report of a running job. Events of a job arrive in order,
// from the thread running it.
struct ProgressEvent {
  enum class Kind {
    kPlanned,     // the plan is known: total tensors and bytes
    kTensorDone,  // one tensor fused or copied
    kWarning,     // something the report will also list
    kFinished,    // outputs published
  };
  Kind kind = Kind::kPlanned;
  std::string tensor;       // kTensorDone
  std::string action;       // kTensorDone: "fused" | "copied"
  int64_t done = 0;         // tensors finished so far
  int64_t total = 0;        // tensors in the plan
  uint64_t bytes_done = 0;  // base-checkpoint bytes finished so far
  uint64_t bytes_total = 0;
  double elapsed_seconds = 0;
  std::string message;   // kWarning
  nlohmann::json stats;  // kTensorDone: the tensor's report entry
};

// Receives progress; implementations must be fast (they run on the job's
// thread between tensors).
class ProgressSink {
 public:
  virtual ~ProgressSink() = default;
  virtual void OnEvent(const ProgressEvent& event) = 0;
};

struct RunOptions {
  ProgressSink* progress = nullptr;  // optional, not owned
  // Checked between tensors; when it becomes true the job stops with
  // CANCELLED and publishes nothing. Optional, not owned.
  const std::atomic<bool>* cancel = nullptr;
};

// Runs a fusion job in-process: validates the spec, opens and validates
// every input, plans per-tensor work (include/exclude, pairing, mismatch
// policy), then streams the base checkpoint tensor by tensor -- at most a
// few tensors resident -- computing each task's mask and delta, merging
// them, and writing the fused tensor, the stitched patch and (with several
// tasks) one patch per task. Outputs are published only when every tensor
// succeeded: patches, then the fused checkpoint, then the report. Returns
// the report (also written to spec.report_uri when set).
//
// Calls ConfigureAllocatorForStreaming() (util/memory.h) so that memory stays
// flat over many tensors.
//
// Per-task patches go next to the stitched patch as
// "<patch stem>.<label>.safetensors" when there are several tasks.
absl::StatusOr<nlohmann::json> RunFusionJob(const FusionSpec& spec,
                                            const UriResolver& resolver,
                                            const RunOptions& options = {});

// Rebuilds a fused checkpoint from a base checkpoint and a patch: for every
// patched tensor FuseTensor(pre, mask, values) in the base dtype, every other
// tensor copied byte for byte; the base's layout and non-tensor files.
absl::Status ApplyPatch(const std::string& pretrained_uri,
                        const std::string& patch_uri,
                        const std::string& output_uri, bool overwrite,
                        const UriResolver& resolver);

}  // namespace tailor

#endif  // TAILOR_FUSION_FUSION_JOB_H_
