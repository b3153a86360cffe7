#include "demo/model_cache.h"

#include <cstdint>
#include <memory>
#include <optional>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "io/checkpoint.h"
#include "model/calibrate.h"
#include "util/file_util.h"
#include "util/sha256.h"
#include "util/status_macros.h"
#include "util/stopwatch.h"

namespace tailor {

absl::StatusOr<LlamaModel> LoadDemoModel(const std::string& dir,
                                         const LlamaConfig& config,
                                         const at::Device& device) {
  TAILOR_ASSIGN_OR_RETURN(std::unique_ptr<Checkpoint> ckpt,
                          Checkpoint::Open(dir));
  return LlamaModel::Load(*ckpt, config, device, at::kFloat);
}

absl::Status DemoModelCache::EnsureModel(
    const std::string& name, const std::string& parent, const DemoTask& task,
    const TrainOptions& train,
    std::function<bool(const std::string&)> trainable,
    const std::string& trainable_description) {
  const std::string& task_key = task.key;
  nlohmann::json lineage = {{"version", kDemoCacheVersion},
                            {"corpus", task.corpus.digest()},
                            {"train", TrainOptionsJson(train)},
                            {"trainable", trainable_description}};
  if (parent.empty()) {
    lineage["init"] = {{"model", preset_.model.ToJson()},
                       {"seed", preset_.init_seed}};
  } else {
    lineage["parent"] = model_keys_.at(parent);
  }
  model_keys_[name] = Sha256Hex(lineage.dump()).substr(0, 16);
  const std::string dir = JoinPath(JoinPath(workdir_, "models"),
                                   absl::StrCat(name, "-", model_keys_[name]));
  const std::string log_path = dir + ".train.json";
  model_dirs_[name] = dir;
  if (IsDirectory(dir) && IsRegularFile(log_path)) {
    TAILOR_ASSIGN_OR_RETURN(std::string text,
                            ReadFileToString(log_path, 1 << 20));
    nlohmann::json entry = nlohmann::json::parse(text, nullptr, false);
    if (!entry.is_discarded()) {
      entry["cached"] = true;
      training_[name] = entry;
      Emit(absl::StrCat(name, ": cached"));
      return absl::OkStatus();
    }
  }
  TAILOR_RETURN_IF_ERROR(RemoveAll(dir));
  TAILOR_RETURN_IF_ERROR(MakeDirectories(Dirname(dir)));
  std::optional<LlamaModel> model;
  if (parent.empty()) {
    TAILOR_ASSIGN_OR_RETURN(
        model, LlamaModel::Init(preset_.model, preset_.init_seed, at::kFloat,
                                device_));
  } else {
    TAILOR_ASSIGN_OR_RETURN(
        model, LoadDemoModel(model_dirs_.at(parent), preset_.model, device_));
  }
  TrainOptions options = train;
  options.trainable = std::move(trainable);
  options.on_log = [&](int64_t step, double loss) {
    Emit(absl::StrFormat("%s: step %d/%d loss %.4f (%s)", name, step,
                         options.steps, loss, task.corpus.name()));
  };
  Emit(absl::StrCat(name, ": training on ", task.corpus.name(), " (",
                    options.steps, " steps)"));
  TAILOR_ASSIGN_OR_RETURN(TrainResult result,
                          Train(*model, task.corpus, options));
  LlamaSaveOptions save;
  save.dtype = DType::kF32;
  TAILOR_RETURN_IF_ERROR(model->Save(dir, save));
  nlohmann::json entry = {{"task", task_key},
                          {"corpus", task.corpus.name()},
                          {"final_loss", result.final_loss},
                          {"trainable_parameters", result.trainable_parameters},
                          {"seconds", result.seconds}};
  TAILOR_RETURN_IF_ERROR(WriteFileAtomically(log_path, entry.dump(2) + "\n"));
  entry["cached"] = false;
  training_[name] = entry;
  seconds_[absl::StrCat("train_", name)] = result.seconds;
  return absl::OkStatus();
}

std::string DemoModelCache::HessianPath(const std::string& model_name) const {
  return absl::StrCat(model_dirs_.at(model_name), ".hessians-",
                      preset_.calib_samples, "x", preset_.calib_seq_len,
                      ".safetensors");
}

absl::Status DemoModelCache::EnsureHessians(const std::string& model_name,
                                            const DemoTask& task) {
  const std::string path = HessianPath(model_name);
  if (IsRegularFile(path)) return absl::OkStatus();
  const Stopwatch timer;
  TAILOR_ASSIGN_OR_RETURN(
      LlamaModel model,
      LoadDemoModel(model_dirs_.at(model_name), preset_.model, device_));
  const at::Tensor windows = EvenlySpacedWindows(
      task.corpus.train(), preset_.calib_samples, preset_.calib_seq_len);
  TAILOR_RETURN_IF_ERROR(WriteCalibration(model, windows, path));
  seconds_[absl::StrCat("calibrate_", model_name)] = timer.Seconds();
  Emit(absl::StrCat(model_name, ": calibration written (",
                    preset_.calib_samples, " x ", preset_.calib_seq_len,
                    " tokens)"));
  return absl::OkStatus();
}

nlohmann::json DemoModelCache::ModelsJson() const {
  nlohmann::json models;
  for (const auto& [name, dir] : model_dirs_) {
    models[name] = {
        {"checkpoint", dir},
        {"hessians", model_keys_.count(name) && IsRegularFile(HessianPath(name))
                         ? HessianPath(name)
                         : ""}};
  }
  return models;
}

}  // namespace tailor
