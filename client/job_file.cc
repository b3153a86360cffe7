#include "job_file.h"

#include <set>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_replace.h"
#include "job_spec_json.h"
#include "util/file_util.h"
#include "util/status_macros.h"
#include "yaml-cpp/yaml.h"

namespace tailor::cli {
namespace {

absl::Status Bad(const std::string& path, const std::string& key,
                 const std::string& rule) {
  return absl::InvalidArgumentError(absl::StrCat(path, ": ", key, ": ", rule));
}

template <typename T>
absl::StatusOr<T> As(const YAML::Node& node, const std::string& path,
                     const std::string& key, const char* type) {
  try {
    if (!node.IsScalar()) return Bad(path, key, absl::StrCat("must be ", type));
    return node.as<T>();
  } catch (const YAML::Exception&) {
    return Bad(path, key,
               absl::StrCat("must be ", type, ", not '", node.Scalar(), "'"));
  }
}

absl::StatusOr<std::vector<std::string>> Strings(const YAML::Node& node,
                                                 const std::string& path,
                                                 const std::string& key) {
  std::vector<std::string> out;
  if (node.IsScalar()) {
    out.push_back(node.Scalar());
    return out;
  }
  if (!node.IsSequence())
    return Bad(path, key, "must be a string or a list of strings");
  for (size_t i = 0; i < node.size(); ++i) {
    TAILOR_ASSIGN_OR_RETURN(
        std::string s,
        As<std::string>(node[i], path, absl::StrCat(key, "[", i, "]"),
                        "a string"));
    out.push_back(s);
  }
  return out;
}

std::string Canonical(const std::string& key) {
  return absl::StrReplaceAll(key, {{"-", "_"}});
}

absl::Status ParseTask(const YAML::Node& node, const std::string& path,
                       const std::string& field, TaskSpec* task) {
  if (!node.IsMap()) return Bad(path, field, "must be a mapping");
  for (const auto& kv : node) {
    const std::string key = Canonical(kv.first.as<std::string>());
    const std::string f = absl::StrCat(field, ".", key);
    const YAML::Node& v = kv.second;
    if (key == "label") {
      TAILOR_ASSIGN_OR_RETURN(task->label,
                              As<std::string>(v, path, f, "a string"));
    } else if (key == "finetuned") {
      TAILOR_ASSIGN_OR_RETURN(task->finetuned_uri,
                              As<std::string>(v, path, f, "a string"));
    } else if (key == "patch") {
      TAILOR_ASSIGN_OR_RETURN(task->patch_uri,
                              As<std::string>(v, path, f, "a string"));
    } else if (key == "hessians") {
      TAILOR_ASSIGN_OR_RETURN(task->hessian_uri,
                              As<std::string>(v, path, f, "a string"));
    } else if (key == "keep") {
      TAILOR_ASSIGN_OR_RETURN(task->keep_ratio,
                              As<double>(v, path, f, "a number"));
    } else if (key == "omega") {
      TAILOR_ASSIGN_OR_RETURN(task->omega, As<double>(v, path, f, "a number"));
    } else {
      return Bad(path, f,
                 "unknown key (allowed: label, finetuned, patch, hessians, "
                 "keep, omega)");
    }
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<FusionSpec> LoadJobFile(const std::string& path) {
  TAILOR_ASSIGN_OR_RETURN(std::string text, ReadFileToString(path, 1 << 20));
  YAML::Node root;
  try {
    root = YAML::Load(text);
  } catch (const YAML::Exception& e) {
    return absl::InvalidArgumentError(
        absl::StrCat(path, ": not valid YAML: ", e.what()));
  }
  if (!root.IsMap())
    return Bad(path, "(top level)", "must be a mapping of job fields");
  FusionSpec spec;
  std::vector<std::string> finetuned, patches, hessians, labels;
  bool has_tasks = false;
  std::set<std::string> seen;
  for (const auto& kv : root) {
    const std::string key = Canonical(kv.first.as<std::string>());
    const YAML::Node& v = kv.second;
    if (!seen.insert(key).second) return Bad(path, key, "given twice");
    if (key == "pretrained") {
      TAILOR_ASSIGN_OR_RETURN(spec.pretrained_uri,
                              As<std::string>(v, path, key, "a string"));
    } else if (key == "finetuned") {
      TAILOR_ASSIGN_OR_RETURN(finetuned, Strings(v, path, key));
    } else if (key == "patch") {
      TAILOR_ASSIGN_OR_RETURN(patches, Strings(v, path, key));
    } else if (key == "hessians") {
      TAILOR_ASSIGN_OR_RETURN(hessians, Strings(v, path, key));
    } else if (key == "labels") {
      TAILOR_ASSIGN_OR_RETURN(labels, Strings(v, path, key));
    } else if (key == "tasks") {
      if (!v.IsSequence()) return Bad(path, key, "must be a list");
      has_tasks = true;
      for (size_t i = 0; i < v.size(); ++i) {
        TaskSpec t;
        TAILOR_RETURN_IF_ERROR(
            ParseTask(v[i], path, absl::StrCat("tasks[", i, "]"), &t));
        spec.tasks.push_back(t);
      }
    } else if (key == "method") {
      TAILOR_ASSIGN_OR_RETURN(std::string s,
                              As<std::string>(v, path, key, "a string"));
      TAILOR_ASSIGN_OR_RETURN(spec.method, ParseMethod(s));
    } else if (key == "keep") {
      TAILOR_ASSIGN_OR_RETURN(spec.tailor.keep_ratio,
                              As<double>(v, path, key, "a number"));
    } else if (key == "omega") {
      TAILOR_ASSIGN_OR_RETURN(spec.tailor.omega,
                              As<double>(v, path, key, "a number"));
    } else if (key == "scope") {
      TAILOR_ASSIGN_OR_RETURN(std::string s,
                              As<std::string>(v, path, key, "a string"));
      TAILOR_ASSIGN_OR_RETURN(spec.tailor.scope, ParseScope(s));
    } else if (key == "normalize") {
      TAILOR_ASSIGN_OR_RETURN(std::string s,
                              As<std::string>(v, path, key, "a string"));
      TAILOR_ASSIGN_OR_RETURN(spec.tailor.normalization, ParseNormalization(s));
    } else if (key == "compensation") {
      TAILOR_ASSIGN_OR_RETURN(std::string s,
                              As<std::string>(v, path, key, "a string"));
      TAILOR_ASSIGN_OR_RETURN(spec.tailor.compensation, ParseCompensation(s));
    } else if (key == "damp") {
      TAILOR_ASSIGN_OR_RETURN(spec.tailor.damp,
                              As<double>(v, path, key, "a number"));
    } else if (key == "block_size") {
      TAILOR_ASSIGN_OR_RETURN(spec.tailor.block_size,
                              As<int64_t>(v, path, key, "an integer"));
    } else if (key == "float64") {
      TAILOR_ASSIGN_OR_RETURN(spec.tailor.float64,
                              As<bool>(v, path, key, "true or false"));
    } else if (key == "aggregate") {
      TAILOR_ASSIGN_OR_RETURN(std::string s,
                              As<std::string>(v, path, key, "a string"));
      TAILOR_ASSIGN_OR_RETURN(spec.aggregation, ParseAggregation(s));
    } else if (key == "lambda") {
      TAILOR_ASSIGN_OR_RETURN(spec.lambda,
                              As<double>(v, path, key, "a number"));
    } else if (key == "density") {
      TAILOR_ASSIGN_OR_RETURN(spec.density,
                              As<double>(v, path, key, "a number"));
    } else if (key == "drop") {
      TAILOR_ASSIGN_OR_RETURN(spec.drop, As<double>(v, path, key, "a number"));
    } else if (key == "seed") {
      TAILOR_ASSIGN_OR_RETURN(
          spec.seed, As<uint64_t>(v, path, key, "a non-negative integer"));
    } else if (key == "include") {
      TAILOR_ASSIGN_OR_RETURN(spec.include, Strings(v, path, key));
    } else if (key == "exclude") {
      TAILOR_ASSIGN_OR_RETURN(spec.exclude, Strings(v, path, key));
    } else if (key == "on_mismatch") {
      TAILOR_ASSIGN_OR_RETURN(std::string s,
                              As<std::string>(v, path, key, "a string"));
      TAILOR_ASSIGN_OR_RETURN(spec.on_mismatch, ParseMismatchPolicy(s));
    } else if (key == "out") {
      TAILOR_ASSIGN_OR_RETURN(spec.output_uri,
                              As<std::string>(v, path, key, "a string"));
    } else if (key == "patch_out") {
      TAILOR_ASSIGN_OR_RETURN(spec.patch_uri,
                              As<std::string>(v, path, key, "a string"));
    } else if (key == "report") {
      TAILOR_ASSIGN_OR_RETURN(spec.report_uri,
                              As<std::string>(v, path, key, "a string"));
    } else if (key == "overwrite") {
      TAILOR_ASSIGN_OR_RETURN(spec.overwrite,
                              As<bool>(v, path, key, "true or false"));
    } else if (key == "device") {
      TAILOR_ASSIGN_OR_RETURN(spec.device,
                              As<std::string>(v, path, key, "a string"));
    } else if (key == "threads") {
      TAILOR_ASSIGN_OR_RETURN(spec.threads,
                              As<int>(v, path, key, "an integer"));
    } else {
      return Bad(path, key, "unknown key (see tailorctl fuse --help)");
    }
  }
  if (has_tasks && (!finetuned.empty() || !patches.empty() ||
                    !hessians.empty() || !labels.empty())) {
    return Bad(
        path, "tasks",
        "cannot be combined with top-level finetuned/patch/hessians/labels");
  }
  if (!has_tasks) {
    absl::StatusOr<std::vector<TaskSpec>> tasks =
        TasksFromLists(finetuned, patches, hessians, labels);
    if (!tasks.ok()) {
      return absl::InvalidArgumentError(
          absl::StrCat(path, ": ", tasks.status().message()));
    }
    spec.tasks = *tasks;
  }
  return spec;
}

absl::StatusOr<nlohmann::json> LoadJobFileJson(const std::string& path) {
  TAILOR_ASSIGN_OR_RETURN(FusionSpec spec, LoadJobFile(path));
  TAILOR_RETURN_IF_ERROR(spec.Validate());
  nlohmann::json json = spec.ToJson();
  json["overwrite"] = spec.overwrite;
  return json;
}

absl::StatusOr<std::vector<TaskSpec>> TasksFromLists(
    const std::vector<std::string>& finetuned,
    const std::vector<std::string>& patches,
    const std::vector<std::string>& hessians,
    const std::vector<std::string>& labels) {
  std::vector<TaskSpec> tasks;
  if (!hessians.empty() && hessians.size() != finetuned.size()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "hessians: ", hessians.size(), " given for ", finetuned.size(),
        " finetuned checkpoints; they pair in order, one each"));
  }
  for (size_t i = 0; i < finetuned.size(); ++i) {
    TaskSpec t;
    t.finetuned_uri = finetuned[i];
    if (!hessians.empty()) t.hessian_uri = hessians[i];
    tasks.push_back(t);
  }
  for (const std::string& p : patches) {
    TaskSpec t;
    t.patch_uri = p;
    tasks.push_back(t);
  }
  if (!labels.empty()) {
    if (labels.size() != tasks.size()) {
      return absl::InvalidArgumentError(
          absl::StrCat("labels: ", labels.size(), " given for ", tasks.size(),
                       " tasks (finetuned first, then patches)"));
    }
    for (size_t i = 0; i < tasks.size(); ++i) tasks[i].label = labels[i];
  }
  return tasks;
}

}  // namespace tailor::cli
