#ifndef TAILOR_CLIENT_MERGEKIT_IMPORT_H_
#define TAILOR_CLIENT_MERGEKIT_IMPORT_H_

#include <string>

#include "absl/status/statusor.h"
#include "fusion/fusion_spec.h"  // torch-free
#include "yaml-cpp/yaml.h"

namespace tailor::cli {

// Whether a job file's YAML is a mergekit merge config (it has a top-level
// `merge_method`): LoadJobFile (job_file.h) then reads it with
// MergekitToSpec.
bool IsMergekitConfig(const YAML::Node& root);

// A mergekit config (https://github.com/arcee-ai/mergekit, `mergekit-yaml`)
// as a FusionSpec, for users moving from mergekit:
//   merge_method  linear, slerp, task_arithmetic, ties, dare_ties,
//                 breadcrumbs, della or model_stock (the same method; ties,
//                 dare_ties and della with sign_cancel: positive, ties and
//                 breadcrumbs with count_rule: floor, mergekit's rules);
//   base_model    the pretrained checkpoint (required; for linear it gives
//                 the layout and the tensors no model has);
//   models        [{model, parameters}]: each model but base_model is a
//                 task, labelled after its path; a linear merge keeps the
//                 base model too when it is listed (its task vector is 0);
//   parameters    (global, or per model) weight -> tasks[i].weight; density,
//                 gamma, epsilon (per model only if every model gives the
//                 same value: tailor has one per job); t; normalize ->
//                 normalize_weights; lambda; density, t and lambda may be
//                 gradient lists (FusionSpec::gradients); int8_mask (a memory
//                 knob: accepted and ignored); rescale (true only: DELLA and
//                 DARE always rescale);
//   dtype         float32, float16 or bfloat16: accepted; tailor computes
//                 in float32 (float64 with float64: true) and writes the
//                 base checkpoint's dtype.
// Model names are checkpoint paths or URIs (a Hugging Face hub id is read
// as a relative path). No outputs are set: give --out (or patch-out,
// report) beside -f. Anything else -- slices, other gradient lists, filters,
// tokenizer settings, out_dtype, LoRA "+" references, other methods or
// parameters -- is INVALID_ARGUMENT "<path>: <field>: ..." naming the field.
absl::StatusOr<FusionSpec> MergekitToSpec(const YAML::Node& root,
                                          const std::string& path);

}  // namespace tailor::cli

#endif  // TAILOR_CLIENT_MERGEKIT_IMPORT_H_
