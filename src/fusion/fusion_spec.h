#ifndef TAILOR_FUSION_FUSION_SPEC_H_
#define TAILOR_FUSION_FUSION_SPEC_H_

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "fusion/aggregation.h"
#include "fusion/layer_gradient.h"
#include "fusion/layer_options.h"
#include "fusion/merge_rules.h"
#include "nlohmann/json.hpp"
#include "util/regex.h"

namespace tailor {

enum class Method {
  kTailor,          // Model Tailor: fused score mask + compensation
  kMagnitude,       // salience-only mask, no compensation ("before decoration")
  kTaskArithmetic,  // W_pre + lambda * sum_i D_i
  kTies,            // trim, elect sign, disjoint mean
  kDare,            // drop and rescale, then task arithmetic
  kSpider,          // post-hoc importance weighting (one task)
  // The mergekit family (mergekit_methods.h):
  kLinear,       // sum_i w_i W_i / sum_i w_i
  kSlerp,        // spherical interpolation, pretrained -> the one task, at t
  kDareTies,     // DARE's drop and rescale, then TIES's sign election
  kBreadcrumbs,  // drop the largest and the smallest |D|, then a weighted sum
  kDella,        // magnitude-ranked drop probabilities, sign election
  kModelStock,   // interpolation ratio from the angle between task vectors
};
absl::StatusOr<Method> ParseMethod(absl::string_view text);
absl::string_view MethodName(Method method);

// What to do with a base tensor a task cannot be paired with (missing, or a
// different shape or dtype).
enum class MismatchPolicy { kError, kCopyBase };
absl::StatusOr<MismatchPolicy> ParseMismatchPolicy(absl::string_view text);
absl::string_view MismatchPolicyName(MismatchPolicy policy);

// One task: a fine-tuned checkpoint (or LoRA adapter directory), or a patch
// file written by an earlier job.
struct TaskSpec {
  std::string label;          // defaults to "task<i>"
  std::string finetuned_uri;  // exactly one of finetuned_uri / patch_uri
  std::string patch_uri;
  std::string hessian_uri;           // calibration file (tailor only; optional)
  std::optional<double> keep_ratio;  // per-task rho; default: the job's
  std::optional<double> omega;       // per-task omega; default: the job's
  // Per-task weight w_i (linear, task_arithmetic, ties, dare_ties,
  // breadcrumbs, della); default 1.
  std::optional<double> weight;
};

// Limits Validate() enforces, so that no request costs unbounded work.
inline constexpr int kMaxThreads = 256;            // threads
inline constexpr size_t kMaxUriBytes = 4096;       // every URI (PATH_MAX)
inline constexpr size_t kMaxLabelBytes = 100;      // tasks[i].label
inline constexpr size_t kMaxFilterPatterns = 100;  // include, exclude each
// (each pattern: kMaxRegexLength bytes, RE2 syntax; util/regex.h)

// A fusion job, everything the engine needs. URIs go through the
// UriResolver of the caller.
struct FusionSpec {
  std::string pretrained_uri;
  std::vector<TaskSpec> tasks;
  Method method = Method::kTailor;
  TailorOptions tailor;  // job-wide defaults and kernel knobs
  Aggregation aggregation = Aggregation::kMeanSelected;
  // Scale: task_arithmetic, ties, dare, dare_ties, breadcrumbs, della.
  double lambda = 1.0;
  double density = 0.2;   // ties, breadcrumbs, della: fraction kept per task
  double drop = 0.9;      // dare, dare_ties: drop probability p
  uint64_t seed = 0;      // dare, dare_ties, della
  double t = 0.5;         // slerp: interpolation factor in [0, 1]
  double gamma = 0.01;    // breadcrumbs: fraction of largest |D| dropped
  double epsilon = 0.15;  // della: keep probabilities density +- epsilon
  // Divide the weighted sum by the sum of the weights (of the agreeing
  // tasks, after a sign election). Unset: the method's mergekit default
  // (linear, ties, della: true; task_arithmetic, dare_ties, breadcrumbs:
  // false).
  std::optional<bool> normalize_weights;
  CountRule count_rule = CountRule::kRound;    // ties, breadcrumbs
  SignCancel sign_cancel = SignCancel::kZero;  // ties, dare_ties, della
  // RE2 regular expressions searched for in tensor names (a tensor is fused
  // if it matches any include, or include is empty, and no exclude).
  std::vector<std::string> include;
  std::vector<std::string> exclude;
  MismatchPolicy on_mismatch = MismatchPolicy::kError;
  // Outputs: at least one.
  std::string output_uri;       // fused checkpoint directory (base's layout)
  std::string patch_uri;        // stitched patch (per-task patches beside it)
  std::string report_uri;       // JSON report
  bool overwrite = false;       // replace existing outputs
  std::string device = "auto";  // cpu | cuda | cuda:N | auto
  int threads = 0;  // compute threads, 0..kMaxThreads, applied by the binary
                    // (fuse --local); 0 = the default
  // Per-layer values (issue #19 point 3; layer_gradient.h, spec_gradients.h):
  // a non-empty list replaces its scalar (keep: tailor.keep_ratio, omega:
  // tailor.omega, lambda, density, t) with its value at each tensor's layer,
  // as mergekit's gradients; a task's own keep or omega still wins. The
  // JSON keys keep, omega, lambda, density and t hold a number or a list.
  LayerGradients gradients;

  // INVALID_ARGUMENT naming the field and the rule; checks everything that
  // does not need the files.
  absl::Status Validate() const;
  // normalize_weights, or the method's default when unset.
  bool NormalizeWeights() const;
  // The spec as JSON. Without `with_overwrite` (reports, request
  // fingerprints) `overwrite` is left out: it is not a property of the
  // result. With it, the job service's canonical request form (Prepare, the
  // job store, tailorctl submit): FromJson() reads it back to an equal spec.
  nlohmann::json ToJson(bool with_overwrite = false) const;
  // The inverse of ToJson(), also reading "overwrite": keys may be missing
  // (defaults apply; with variant authors-code, its omega, scope, normalize
  // and dead_columns for those not given: ApplyVariantDefaults); unknown
  // keys and wrongly typed values are INVALID_ARGUMENT naming the key. Does
  // not call Validate().
  static absl::StatusOr<FusionSpec> FromJson(const nlohmann::json& json);
};

// The JSON type a key of FromJson's form must hold: the keys and their
// types are defined once (fusion_spec.cc), and job files (YAML, whose
// scalars carry no type) are converted to that form by them.
enum class SpecValue {
  kString,
  kNumber,           // any JSON number (double)
  kNumberOrNumbers,  // a number, or a list of numbers (per-layer values)
  kBool,
  kInt,      // an integer in int's range
  kInt64,    // an integer in int64_t's range
  kUint64,   // a non-negative integer
  kStrings,  // a list of strings
  kTasks,    // a list of task objects (keys: TaskKeyValue)
};
// The type of top-level key `key`, or nullopt for an unknown key.
std::optional<SpecValue> SpecKeyValue(absl::string_view key);
// The type of a task's key (tasks[i].key), or nullopt for an unknown key.
std::optional<SpecValue> TaskKeyValue(absl::string_view key);
// The task keys, comma-separated, for "unknown key (allowed: ...)".
std::string TaskKeyNames();

// A spec's include/exclude filters, compiled (RE2: matching is linear in the
// tensor name, whatever the pattern).
class TensorFilter {
 public:
  // Errors as FusionSpec::Validate() reports them for include[i]/exclude[i].
  static absl::StatusOr<TensorFilter> Compile(const FusionSpec& spec);

  // Some include pattern matches somewhere in `name` (true if there is no
  // include pattern).
  bool Included(absl::string_view name) const;
  // Some exclude pattern matches somewhere in `name`.
  bool Excluded(absl::string_view name) const;

 private:
  std::vector<Regex> include_, exclude_;
};

}  // namespace tailor

#endif  // TAILOR_FUSION_FUSION_SPEC_H_
