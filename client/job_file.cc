#include "client/job_file.h"

#include <stdlib.h>
#include <unistd.h>

#include <optional>
#include <set>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_replace.h"
#include "absl/strings/strip.h"
#include "client/mergekit_import.h"
#include "fusion/layer_gradient.h"
#include "storage/uri_resolver.h"
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

// One YAML value as the JSON of a spec key of type `type` (fusion_spec.h).
// YAML scalars are untyped text: they are read as the key's type, errors
// naming the file and the key.
absl::StatusOr<nlohmann::json> ToJsonValue(const YAML::Node& v,
                                           const std::string& path,
                                           const std::string& key,
                                           SpecValue type) {
  switch (type) {
    case SpecValue::kString:
      return As<std::string>(v, path, key, "a string");
    case SpecValue::kNumber:
      return As<double>(v, path, key, "a number");
    case SpecValue::kNumberOrNumbers: {
      // A per-layer list (issue #19 point 3); FromJson checks it as well.
      if (!v.IsSequence()) return As<double>(v, path, key, "a number");
      if (absl::Status s = CheckGradientLength(v.size(), key); !s.ok()) {
        return absl::InvalidArgumentError(
            absl::StrCat(path, ": ", s.message()));
      }
      nlohmann::json list = nlohmann::json::array();
      for (size_t i = 0; i < v.size(); ++i) {
        TAILOR_ASSIGN_OR_RETURN(
            double d,
            As<double>(v[i], path, absl::StrCat(key, "[", i, "]"), "a number"));
        list.push_back(d);
      }
      return list;
    }
    case SpecValue::kBool:
      return As<bool>(v, path, key, "true or false");
    case SpecValue::kInt:
      return As<int>(v, path, key, "an integer");
    case SpecValue::kInt64:
      return As<int64_t>(v, path, key, "an integer");
    case SpecValue::kUint64:
      return As<uint64_t>(v, path, key, "a non-negative integer");
    case SpecValue::kStrings: {
      TAILOR_ASSIGN_OR_RETURN(std::vector<std::string> list,
                              Strings(v, path, key));
      return nlohmann::json(list);
    }
    case SpecValue::kTasks:
      break;  // ToJsonTasks
  }
  return absl::InternalError(absl::StrCat(key, ": no YAML conversion"));
}

// `tasks:` as the JSON list of FromJson's form.
absl::StatusOr<nlohmann::json> ToJsonTasks(const YAML::Node& v,
                                           const std::string& path) {
  if (!v.IsSequence()) return Bad(path, "tasks", "must be a list");
  nlohmann::json tasks = nlohmann::json::array();
  for (size_t i = 0; i < v.size(); ++i) {
    const std::string field = absl::StrCat("tasks[", i, "]");
    if (!v[i].IsMap()) return Bad(path, field, "must be a mapping");
    nlohmann::json task = nlohmann::json::object();
    for (const auto& kv : v[i]) {
      const std::string key = Canonical(kv.first.as<std::string>());
      const std::string f = absl::StrCat(field, ".", key);
      std::optional<SpecValue> type = TaskKeyValue(key);
      if (!type) {
        return Bad(path, f,
                   absl::StrCat("unknown key (allowed: ", TaskKeyNames(), ")"));
      }
      TAILOR_ASSIGN_OR_RETURN(task[key],
                              ToJsonValue(kv.second, path, f, *type));
    }
    tasks.push_back(std::move(task));
  }
  return tasks;
}

// The job file's directory, absolute (its relative paths are relative to
// it, as in kubectl and docker compose).
std::string AbsoluteDirOf(const std::string& path) {
  const std::string dir = Dirname(path);
  char* real = ::realpath(dir.c_str(), nullptr);
  if (real != nullptr) {
    std::string out(real);
    ::free(real);
    return out;
  }
  char cwd[4096];
  if (dir[0] == '/' || ::getcwd(cwd, sizeof(cwd)) == nullptr) return dir;
  return JoinPath(cwd, dir);
}

// A plain relative path (no scheme, not absolute) made relative to `dir`.
void ResolveAgainst(const std::string& dir, std::string* uri) {
  if (uri->empty() || (*uri)[0] == '/' || !UriScheme(*uri).empty()) return;
  // `dir` is canonical (no symlinks), so leading "../" can be taken off it
  // lexically; later components are left to the resolver.
  std::string base = dir;
  absl::string_view rel = *uri;
  for (;;) {
    if (absl::ConsumePrefix(&rel, "./")) continue;
    if (rel == ".") {
      rel = "";
    } else if (rel == ".." || absl::StartsWith(rel, "../")) {
      base = Dirname(base);
      rel.remove_prefix(rel.size() == 2 ? 2 : 3);
      continue;
    }
    break;
  }
  *uri = rel.empty() ? base : JoinPath(base, rel);
}

// The spec's plain relative paths made relative to `dir`.
void ResolvePaths(const std::string& dir, FusionSpec* spec) {
  for (std::string* uri : {&spec->pretrained_uri, &spec->output_uri,
                           &spec->patch_uri, &spec->report_uri}) {
    ResolveAgainst(dir, uri);
  }
  for (TaskSpec& t : spec->tasks) {
    for (std::string* uri : {&t.finetuned_uri, &t.patch_uri, &t.hessian_uri}) {
      ResolveAgainst(dir, uri);
    }
  }
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
  if (IsMergekitConfig(root)) {
    TAILOR_ASSIGN_OR_RETURN(FusionSpec spec, MergekitToSpec(root, path));
    ResolvePaths(AbsoluteDirOf(path), &spec);
    return spec;
  }
  // YAML -> FromJson's form -> FusionSpec: the spec's keys are defined once
  // (fusion_spec.cc); a job file adds only the flag-style task lists.
  nlohmann::json json = nlohmann::json::object();
  std::vector<std::string> finetuned, patches, hessians, labels, weights;
  bool has_tasks = false;
  std::set<std::string> seen;
  for (const auto& kv : root) {
    const std::string key = Canonical(kv.first.as<std::string>());
    const YAML::Node& v = kv.second;
    if (!seen.insert(key).second) return Bad(path, key, "given twice");
    if (key == "finetuned") {
      TAILOR_ASSIGN_OR_RETURN(finetuned, Strings(v, path, key));
    } else if (key == "patch") {
      TAILOR_ASSIGN_OR_RETURN(patches, Strings(v, path, key));
    } else if (key == "hessians") {
      TAILOR_ASSIGN_OR_RETURN(hessians, Strings(v, path, key));
    } else if (key == "labels") {
      TAILOR_ASSIGN_OR_RETURN(labels, Strings(v, path, key));
    } else if (key == "weights") {
      TAILOR_ASSIGN_OR_RETURN(weights, Strings(v, path, key));
    } else if (key == "tasks") {
      has_tasks = true;
      TAILOR_ASSIGN_OR_RETURN(json[key], ToJsonTasks(v, path));
    } else if (std::optional<SpecValue> type = SpecKeyValue(key)) {
      TAILOR_ASSIGN_OR_RETURN(json[key], ToJsonValue(v, path, key, *type));
    } else {
      return Bad(path, key, "unknown key (see tailorctl fuse --help)");
    }
  }
  if (has_tasks && (!finetuned.empty() || !patches.empty() ||
                    !hessians.empty() || !labels.empty() || !weights.empty())) {
    return Bad(path, "tasks",
               "cannot be combined with top-level "
               "finetuned/patch/hessians/labels/weights");
  }
  // Every value has its key's JSON type by now: what FromJson can still
  // refuse is an enum's name (ParseMethod's error, as before).
  TAILOR_ASSIGN_OR_RETURN(FusionSpec spec, FusionSpec::FromJson(json));
  if (!has_tasks) {
    absl::StatusOr<std::vector<TaskSpec>> tasks =
        TasksFromLists(finetuned, patches, hessians, labels);
    if (!tasks.ok()) {
      return absl::InvalidArgumentError(
          absl::StrCat(path, ": ", tasks.status().message()));
    }
    spec.tasks = *tasks;
  }
  if (!weights.empty()) {
    std::vector<double> w;
    for (size_t i = 0; i < weights.size(); ++i) {
      TAILOR_ASSIGN_OR_RETURN(
          double x, As<double>(YAML::Node(weights[i]), path,
                               absl::StrCat("weights[", i, "]"), "a number"));
      w.push_back(x);
    }
    absl::Status s = ApplyWeights(w, &spec.tasks);
    if (!s.ok()) {
      return absl::InvalidArgumentError(absl::StrCat(path, ": ", s.message()));
    }
  }
  ResolvePaths(AbsoluteDirOf(path), &spec);
  return spec;
}

absl::Status ApplyWeights(const std::vector<double>& weights,
                          std::vector<TaskSpec>* tasks) {
  if (weights.size() != tasks->size()) {
    return absl::InvalidArgumentError(
        absl::StrCat("weight: ", weights.size(), " given for ", tasks->size(),
                     " tasks; they pair in order, one each"));
  }
  for (size_t i = 0; i < weights.size(); ++i) (*tasks)[i].weight = weights[i];
  return absl::OkStatus();
}

absl::StatusOr<nlohmann::json> LoadJobFileJson(const std::string& path) {
  TAILOR_ASSIGN_OR_RETURN(FusionSpec spec, LoadJobFile(path));
  TAILOR_RETURN_IF_ERROR(spec.Validate());
  return spec.ToJson(/*with_overwrite=*/true);
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
