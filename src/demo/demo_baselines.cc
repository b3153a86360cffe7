#include "demo/demo_baselines.h"

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace tailor {
namespace {

// A baseline method and the settings its row appears in.
struct BaselineRow {
  const char* label;
  const char* slug;
  Method method;
  bool single_task;
  bool multi_task;
  bool mergekit;  // of the mergekit family (DemoPreset::partial_mergekit)
};

// Table order: the original baselines first (their rows keep their place),
// then the mergekit family.
constexpr BaselineRow kRows[] = {
    {"dare", "dare", Method::kDare, true, true, false},
    {"ties", "ties", Method::kTies, true, true, false},
    {"task arithmetic", "task-arithmetic", Method::kTaskArithmetic, true, true,
     false},
    {"linear", "linear", Method::kLinear, true, true, true},
    {"slerp", "slerp", Method::kSlerp, true, false, true},  // two models only
    {"dare_ties", "dare-ties", Method::kDareTies, true, true, true},
    {"breadcrumbs", "breadcrumbs", Method::kBreadcrumbs, true, true, true},
    {"della", "della", Method::kDella, true, true, true},
    {"model_stock", "model-stock", Method::kModelStock, false, true,
     true},  // needs >= 2 task vectors
};

// `base` with `method`, its demo parameters and `tasks` (Hessians dropped:
// no baseline reads them).
FusionSpec BaselineSpec(const DemoPreset& preset, FusionSpec spec,
                        Method method, std::vector<TaskSpec> tasks) {
  spec.method = method;
  spec.tasks = std::move(tasks);
  for (TaskSpec& t : spec.tasks) t.hessian_uri.clear();
  spec.lambda =
      method == Method::kTaskArithmetic ? preset.task_arithmetic_lambda : 1.0;
  spec.density = preset.ties_density;
  spec.drop = preset.dare_drop;
  // Each read by one method only (slerp, breadcrumbs, della).
  spec.t = preset.slerp_t;
  spec.gamma = preset.breadcrumbs_gamma;
  spec.epsilon = preset.della_epsilon;
  return spec;
}

std::string Percent(double fraction) {
  return absl::StrFormat("%g%%", 100 * fraction);
}

}  // namespace

std::vector<DemoBaseline> SingleTaskBaselines(const DemoPreset& preset,
                                              const FusionSpec& base,
                                              const TaskSpec& task,
                                              const std::string& setting,
                                              bool with_mergekit) {
  // Linear over the one task would be the fine-tuned model: mergekit users
  // list the base model among the models instead.
  TaskSpec pretrained;
  pretrained.label = "pretrained";
  pretrained.finetuned_uri = base.pretrained_uri;
  std::vector<DemoBaseline> rows;
  for (const BaselineRow& row : kRows) {
    if (!row.single_task || (row.mergekit && !with_mergekit)) continue;
    std::vector<TaskSpec> tasks = {task};
    if (row.method == Method::kLinear) tasks = {pretrained, task};
    rows.push_back({row.label, absl::StrCat(setting, "-", row.slug),
                    BaselineSpec(preset, base, row.method, std::move(tasks))});
  }
  return rows;
}

std::vector<DemoBaseline> MultiTaskBaselines(const DemoPreset& preset,
                                             const FusionSpec& base,
                                             const std::vector<TaskSpec>& tasks,
                                             const std::string& suffix) {
  std::vector<DemoBaseline> rows;
  for (const BaselineRow& row : kRows) {
    if (!row.multi_task) continue;
    rows.push_back({absl::StrCat(row.label, suffix),
                    absl::StrCat("multi-", row.slug),
                    BaselineSpec(preset, base, row.method, tasks)});
  }
  return rows;
}

std::vector<std::string> BaselineNotes(const DemoPreset& p) {
  const std::string keep = Percent(p.ties_density);
  return {
      absl::StrFormat(
          "ties, breadcrumbs, della: keep %s of each task vector (rho of the "
          "main table: %s); dare, dare_ties: drop p = %g, so %s kept on "
          "average, rescaled by 1/(1-p); seed 0; lambda 1",
          keep, Percent(p.keep), p.dare_drop, Percent(1 - p.dare_drop)),
      absl::StrFormat(
          "breadcrumbs: also drops the largest gamma = %s of |delta|; della: "
          "keep probability %s +- %s by magnitude rank, survivors rescaled by "
          "1/p; ties, dare_ties, della: sign election",
          Percent(p.breadcrumbs_gamma), keep, Percent(p.della_epsilon)),
      absl::StrFormat("task arithmetic: lambda = %g; linear: equal weights, "
                      "normalised (single task: the pretrained model and B, "
                      "= task arithmetic at lambda 0.5)",
                      p.task_arithmetic_lambda),
      absl::StrFormat(
          "slerp: t = %g from the pretrained model to B; single task only "
          "(it interpolates between two models)",
          p.slerp_t),
      absl::StrFormat(
          "model_stock: multi-task only (its ratio comes from the angle "
          "between two task vectors); multi-task baselines keep %s per task, "
          "tailor %s per task",
          keep, Percent(p.multitask_keep)),
  };
}

}  // namespace tailor
