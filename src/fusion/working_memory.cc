#include "fusion/working_memory.h"

#include <algorithm>

#include "fusion/top_k_window.h"

namespace tailor {

int64_t EstimateWorkingBytes(const FusionSpec& spec, const TensorInfo& info,
                             const std::vector<WorkingMemoryTask>& tasks,
                             const PreparedHessianCache& hessians,
                             bool concurrent) {
  const int64_t e = spec.tailor.float64 ? 8 : 4;
  const int64_t n = info.numel;
  const int64_t t_count = static_cast<int64_t>(tasks.size());
  int64_t bytes = n * e * 3 + t_count * n * (7 * e + 1);
  if (t_count > 1) bytes += 2 * n * e;
  if (spec.method == Method::kTailor && info.shape.size() == 2) {
    const int64_t c = info.shape[1];
    int64_t scratch = 0, chunk = 0;
    bool calibrated = false;
    for (size_t t = 0; t < tasks.size(); ++t) {
      const WorkingMemoryTask& task = tasks[t];
      if (!task.hessian_key) continue;
      calibrated = true;
      const int64_t own = concurrent ? hessians.LiveBytesOf(static_cast<int>(t),
                                                            *task.hessian_key)
                                     : 0;
      bytes += own;
      if (own == 0 &&
          !hessians.IsLive(static_cast<int>(t), *task.hessian_key)) {
        bytes += 2 * c * c * e;
        // One preparation at a time, before the kernel's temporaries
        // (4 n e, counted above) exist: only its excess counts.
        scratch = std::max<int64_t>(0, 3 * c * c * e - 4 * n * e);
      }
      if (task.options.compensation == Compensation::kExact) {
        chunk = std::max(chunk, task.options.exact_chunk_bytes);
      }
    }
    if (calibrated) {
      bytes += (concurrent ? 0 : hessians.LiveBytes()) + scratch + chunk;
    }
  }
  return bytes;
}

int64_t EstimateStreamedWorkingBytes(const FusionSpec& spec,
                                     const TensorInfo& info, int64_t tasks,
                                     int64_t chunk_elements) {
  const int64_t e = spec.tailor.float64 ? 8 : 4;
  const int64_t n = std::max<int64_t>(info.numel, 1);
  const int64_t c = std::clamp<int64_t>(chunk_elements, 1, n);
  const int64_t s = std::max<int64_t>(
      1, static_cast<int64_t>(info.nbytes) / std::max<int64_t>(info.numel, 1));
  const int64_t t = std::max<int64_t>(tasks, 1);
  int64_t bytes = (t + 2) * c * s + (t + 1) * c * e + (13 + e) * c + 4 * c * e;
  if (spec.method == Method::kMagnitude || spec.method == Method::kTies) {
    const int64_t per_task =
        (int64_t{1} << 16) * 8 +
        (TopKWindow<float>::kSampleKeys + TopKWindow<float>::Budget(n, c)) * e;
    bytes += t * per_task;
  }
  return bytes;
}

}  // namespace tailor
