#ifndef TAILOR_CLIENT_JOB_FILE_H_
#define TAILOR_CLIENT_JOB_FILE_H_

#include <string>

#include "absl/status/statusor.h"
#include "fusion/fusion_spec.h"  // torch-free
#include "nlohmann/json.hpp"

namespace tailor::cli {

// Reads a job file (YAML; JSON is YAML too) into a FusionSpec. Its keys are
// the long flag names of `tailorctl fuse` with '-' or '_' (pretrained,
// finetuned, patch, hessians, labels, method, keep, omega, scope, normalize,
// compensation, dead-columns, damp, block-size, float64, aggregate, lambda,
// density, drop, seed, t, gamma, epsilon, normalize-weights, count-rule,
// sign-cancel, include, exclude, on-mismatch, out, patch-out, report,
// overwrite, device, threads), `weights` (a list paired in order with the
// tasks, as --weight), plus `tasks:` — a list of {label, finetuned | patch,
// hessians, keep, omega, weight} for per-task settings (not together with
// the top-level finetuned/patch/hessians/weights lists). The top-level
// keep, omega, lambda, density and t take a number or a list over the
// layers (FusionSpec::gradients). A file with a
// top-level `merge_method` is a mergekit config instead
// (mergekit_import.h). Unknown keys and wrongly
// typed values are INVALID_ARGUMENT naming the file and the key. Plain relative
// paths in it are relative to the job file's own directory (as in kubectl
// and docker compose), not to the working directory: they come back
// absolute. URIs with a scheme (file://...) and absolute paths are kept.
absl::StatusOr<FusionSpec> LoadJobFile(const std::string& path);

// LoadJobFile(path) in the engine's canonical JSON form
// (FusionSpec::ToJson(/*with_overwrite=*/true)), validated like `fuse
// --local` validates it: what `tailorctl submit -f` sends.
absl::StatusOr<nlohmann::json> LoadJobFileJson(const std::string& path);

// Tasks from the flag-style lists: each finetuned URI (paired in order with
// a hessians URI when any are given), then each patch URI; labels, when
// given, name them in that order.
absl::StatusOr<std::vector<TaskSpec>> TasksFromLists(
    const std::vector<std::string>& finetuned,
    const std::vector<std::string>& patches,
    const std::vector<std::string>& hessians,
    const std::vector<std::string>& labels);

// Sets tasks[i].weight = weights[i]: `--weight` and a job file's
// `weights:` list pair with the tasks in order, one each (INVALID_ARGUMENT
// "weight: ..." otherwise).
absl::Status ApplyWeights(const std::vector<double>& weights,
                          std::vector<TaskSpec>* tasks);

}  // namespace tailor::cli

#endif  // TAILOR_CLIENT_JOB_FILE_H_
