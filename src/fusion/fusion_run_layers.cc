// FusionRun's per-layer parameters (fusion_run.h; issue #19 point 3): a
// spec whose keep, omega, lambda, density or t is a list over the layers
// (FusionSpec::gradients) computes each fused tensor with the spec at its
// layer's gradient position (layer_gradient.h, mergekit's rule), decided
// once here after the plan; the report row says what it got.

#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "fusion/fusion_run.h"
#include "fusion/layer_gradient.h"
#include "fusion/spec_gradients.h"
#include "io/byte_source.h"
#include "util/file_util.h"
#include "util/status_macros.h"

namespace tailor {
namespace fusion_internal {

namespace {

// config.json files are a few KB; anything this large is not one.
constexpr uint64_t kMaxConfigBytes = 4 << 20;

}  // namespace

TailorOptions TaskTailorOptions(const FusionSpec& spec, const TaskSpec& task) {
  TailorOptions o = spec.tailor;
  if (task.keep_ratio) o.keep_ratio = *task.keep_ratio;
  if (task.omega) o.omega = *task.omega;
  if (spec.method == Method::kMagnitude) {
    o.omega = 1.0;
    o.compensation = Compensation::kNone;
  }
  return o;
}

absl::Status FusionRun::PlanLayers() {
  if (spec_.gradients.empty()) return absl::OkStatus();
  // The base's config.json, when it has one, gives the layer count
  // (num_hidden_layers); else the tensor names do.
  const std::string config = JoinPath(base_->directory(), "config.json");
  std::optional<std::string> config_text;
  if (resolver_.PathIsRegularFile(config)) {
    TAILOR_ASSIGN_OR_RETURN(const std::string canonical,
                            resolver_.CheckLocalPath(config));
    TAILOR_ASSIGN_OR_RETURN(std::unique_ptr<ByteSource> in,
                            resolver_.OpenSource(canonical, config));
    if (in->size() > kMaxConfigBytes) {
      return absl::InvalidArgumentError(
          absl::StrCat(config, ": larger than ", kMaxConfigBytes,
                       " bytes; not a model's config.json"));
    }
    std::string text(in->size(), '\0');
    TAILOR_RETURN_IF_ERROR(in->ReadAt(0, text.size(), text.data()));
    config_text = std::move(text);
  }
  std::vector<std::string> names;
  for (const TensorInfo& info : base_->tensors()) names.push_back(info.name);
  TAILOR_ASSIGN_OR_RETURN(const int64_t layers,
                          CountLayers(names, config_text, config));
  for (WorkItem& item : plan_) {
    if (!item.fuse) continue;
    const std::optional<int64_t> layer = LayerIndexOf(item.info->name);
    auto [it, added] = layer_params_.try_emplace(layer.value_or(-1));
    LayerParams& p = it->second;
    if (added) {
      p.layer = layer;
      p.spec = SpecAtPosition(spec_, GradientPosition(layer, layers));
      for (const TaskSpec& ts : spec_.tasks) {
        p.task_options.push_back(TaskTailorOptions(p.spec, ts));
      }
    }
    item.params = &p;
  }
  return absl::OkStatus();
}

const FusionSpec& FusionRun::SpecAt(size_t index) const {
  const LayerParams* p = plan_[index].params;
  return p != nullptr ? p->spec : spec_;
}

const TailorOptions& FusionRun::OptionsAt(size_t index, size_t task) const {
  const LayerParams* p = plan_[index].params;
  return p != nullptr ? p->task_options[task] : tasks_[task]->options;
}

void FusionRun::AddLayerParameters(size_t index, nlohmann::json* row) const {
  const LayerParams* p = plan_[index].params;
  if (p == nullptr) return;
  (*row)["layer"] = p->layer ? nlohmann::json(*p->layer) : nlohmann::json();
  nlohmann::json values = nlohmann::json::object();
  for (absl::string_view key : GradientKeys()) {
    if (!GradientOf(spec_.gradients, key).empty()) {
      values[std::string(key)] = ScalarOf(p->spec, key);
    }
  }
  (*row)["parameters"] = std::move(values);
  // keep and omega are per task: what each task really got.
  const bool keep = !spec_.gradients.keep.empty();
  const bool omega = !spec_.gradients.omega.empty();
  nlohmann::json& tasks = (*row)["tasks"];
  for (size_t t = 0; t < tasks.size() && t < p->task_options.size(); ++t) {
    if (keep) tasks[t]["keep"] = p->task_options[t].keep_ratio;
    if (omega) tasks[t]["omega"] = p->task_options[t].omega;
  }
}

}  // namespace fusion_internal
}  // namespace tailor
