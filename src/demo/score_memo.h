#ifndef TAILOR_DEMO_SCORE_MEMO_H_
#define TAILOR_DEMO_SCORE_MEMO_H_

// The forgetting benchmark's scores, memoized on disk by the bytes of the
// scored checkpoint (demo/forgetting_demo.h, DemoOptions::reuse_scores).

#include <c10/core/Device.h>

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "demo/demo_task.h"
#include "model/llama_config.h"
#include "nlohmann/json.hpp"

namespace tailor {

// SHA-256 over a checkpoint directory's regular files: names, sizes, bytes.
// Demo checkpoints are a few MiB.
absl::StatusOr<std::string> CheckpointDigest(const std::string& dir);

// Scores of checkpoint directories on the demo's tasks: {key: {accuracy (%),
// perplexity, loss, tokens}} per task key. The evaluation windows are fixed
// by the preset (the memo's directory is keyed by it), so the scores are a
// function of the checkpoint's bytes and the device: they are memoized in
// <dir>/v<version>-<sha256 of the files>-<device>.json. A memo that cannot
// be read is recomputed and rewritten.
//
// Thread-safe (fusion jobs are scored from several threads).
class DemoScoreMemo {
 public:
  // `tasks` (by key) must outlive the memo. `reuse`: false evaluates
  // everything afresh (the memo is still written).
  DemoScoreMemo(std::string dir, const std::map<std::string, DemoTask>* tasks,
                const LlamaConfig& config, at::Device device, bool reuse)
      : dir_(std::move(dir)),
        tasks_(tasks),
        config_(config),
        device_(device),
        reuse_(reuse) {}

  // The scores of checkpoint `checkpoint_dir` on `keys`.
  absl::StatusOr<nlohmann::json> Score(const std::string& checkpoint_dir,
                                       const std::vector<std::string>& keys);

  // Checkpoints whose scores all came from the memo, and those evaluated.
  int64_t hits() const;
  int64_t misses() const;
  // Seconds spent evaluating, summed over the threads.
  double evaluate_seconds() const;

 private:
  const std::string dir_;
  const std::map<std::string, DemoTask>* const tasks_;
  const LlamaConfig config_;
  const at::Device device_;
  const bool reuse_;
  mutable absl::Mutex mu_;  // guards the counters below
  int64_t hits_ ABSL_GUARDED_BY(mu_) = 0;
  int64_t misses_ ABSL_GUARDED_BY(mu_) = 0;
  double evaluate_seconds_ ABSL_GUARDED_BY(mu_) = 0;
};

}  // namespace tailor

#endif  // TAILOR_DEMO_SCORE_MEMO_H_
