#ifndef TAILOR_DEMO_DEMO_BASELINES_H_
#define TAILOR_DEMO_DEMO_BASELINES_H_

// The forgetting benchmark's baselines (demo/forgetting_demo.h): every merge
// method other than Model Tailor, with the parameters its table row runs at.
//
// Each sparse method gets the budget of the main table's Model Tailor row
// (DemoPreset::keep = ties_density = 1 - dare_drop): TIES, breadcrumbs and
// DELLA keep (on average) that fraction of each task vector, DARE and
// DARE-TIES drop the rest at random (seed 0). The others have no budget:
// task arithmetic (lambda = task_arithmetic_lambda), linear (equal weights,
// normalised), SLERP (t = slerp_t) and Model Stock. Rows whose method needs
// more models than the setting has are left out, each for a reason
// (BaselineNotes): in the single-task setting linear merges the pretrained
// checkpoint with the task (1:1; over the task alone it would be the
// fine-tuned model) and Model Stock does not run (it needs two task
// vectors); in the multi-task setting SLERP does not run (it interpolates
// between exactly two models: the pretrained one and one task).

#include <string>
#include <vector>

#include "demo/demo_preset.h"
#include "fusion/fusion_spec.h"

namespace tailor {

// One baseline row: what the table calls it and the job that fuses it.
struct DemoBaseline {
  std::string label;  // the row's method label, e.g. "ties" or "ties B+C"
  std::string slug;   // its fused checkpoint's folder name
  FusionSpec spec;    // method, parameters and tasks; outputs not set
};

// The single-task rows, in table order: dare, ties, task arithmetic (the
// original baselines), then (with_mergekit) linear, slerp, dare_ties,
// breadcrumbs, della. `base` holds the job-wide fields (pretrained
// checkpoint, device, seed); `task` is the fine-tuned model (its Hessians
// are not used); slugs are prefixed with `setting` and "-".
std::vector<DemoBaseline> SingleTaskBaselines(const DemoPreset& preset,
                                              const FusionSpec& base,
                                              const TaskSpec& task,
                                              const std::string& setting,
                                              bool with_mergekit);

// The multi-task rows over `tasks` (>= 2), labels suffixed " B+C" by
// `suffix`: dare, ties, task arithmetic, then linear, dare_ties,
// breadcrumbs, della, model_stock.
std::vector<DemoBaseline> MultiTaskBaselines(const DemoPreset& preset,
                                             const FusionSpec& base,
                                             const std::vector<TaskSpec>& tasks,
                                             const std::string& suffix);

// One line per baseline method: its parameters in the demo and why a
// method is missing from a setting; printed under the tables and kept in
// the report.
std::vector<std::string> BaselineNotes(const DemoPreset& preset);

}  // namespace tailor

#endif  // TAILOR_DEMO_DEMO_BASELINES_H_
