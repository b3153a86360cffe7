#ifndef TAILOR_DEMO_MODEL_CACHE_H_
#define TAILOR_DEMO_MODEL_CACHE_H_

// The forgetting benchmark's trained models and calibration files, cached
// on disk under the work directory (demo/forgetting_demo.h).

#include <c10/core/Device.h>

#include <functional>
#include <map>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "demo/demo_preset.h"
#include "demo/demo_task.h"
#include "demo/trainer.h"
#include "model/llama.h"
#include "model/llama_config.h"
#include "nlohmann/json.hpp"

namespace tailor {

// Bump when the scenario's code changes what a cached artifact holds.
inline constexpr int kDemoCacheVersion = 1;

// Loads a demo checkpoint directory as a float32 LlamaModel on `device`.
absl::StatusOr<LlamaModel> LoadDemoModel(const std::string& dir,
                                         const LlamaConfig& config,
                                         const at::Device& device);

// Trains the scenario's models, or finds them in models/<name>-<key> under
// the work directory, keyed by each model's whole lineage (parents' keys,
// corpora, training options), so that changing one step retrains only what
// depends on it; calibration files are written beside them. Not
// thread-safe: the main thread sets the models up before any fusion runs.
class DemoModelCache {
 public:
  using Log = std::function<void(const std::string&)>;
  // `preset` must outlive the cache.
  DemoModelCache(const DemoPreset& preset, std::string workdir,
                 at::Device device, Log log)
      : preset_(preset),
        workdir_(std::move(workdir)),
        device_(device),
        log_(std::move(log)) {}

  // Trains (or finds cached) the model `name`: from the model `parent`
  // (empty: a fresh init) on `task`; only the parameters `trainable` accepts
  // (all when null), described for the cache key by
  // `trainable_description`.
  absl::Status EnsureModel(const std::string& name, const std::string& parent,
                           const DemoTask& task, const TrainOptions& train,
                           std::function<bool(const std::string&)> trainable,
                           const std::string& trainable_description);

  // Writes (unless present) the calibration file of model `model_name` from
  // the preset's windows of `task`'s training stream.
  absl::Status EnsureHessians(const std::string& model_name,
                              const DemoTask& task);

  // The checkpoint directory of a model EnsureModel has set up.
  const std::string& dir(const std::string& name) const {
    return model_dirs_.at(name);
  }
  // Its calibration file's path (whether written or not).
  std::string HessianPath(const std::string& model_name) const;

  // The report's "models": {name: {checkpoint, hessians (path or "")}}.
  nlohmann::json ModelsJson() const;
  // The report's "training": {name: {task, corpus, final_loss, ..., cached}}.
  const nlohmann::json& training() const { return training_; }
  // Seconds spent: train_<name>, calibrate_<name> for what ran.
  const nlohmann::json& seconds() const { return seconds_; }

 private:
  void Emit(const std::string& line) const {
    if (log_) log_(line);
  }

  const DemoPreset& preset_;
  const std::string workdir_;
  const at::Device device_;
  const Log log_;
  std::map<std::string, std::string> model_dirs_;
  std::map<std::string, std::string> model_keys_;  // lineage hashes
  nlohmann::json training_ = nlohmann::json::object();
  nlohmann::json seconds_ = nlohmann::json::object();
};

}  // namespace tailor

#endif  // TAILOR_DEMO_MODEL_CACHE_H_
