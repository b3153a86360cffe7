#include "client/mergekit_import.h"

#include <cctype>
#include <map>
#include <optional>
#include <set>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "fusion/layer_gradient.h"
#include "fusion/spec_gradients.h"
#include "nlohmann/json.hpp"
#include "util/quote.h"
#include "util/status_macros.h"

namespace tailor::cli {
namespace {

absl::Status Bad(const std::string& path, const std::string& field,
                 const std::string& rule) {
  return absl::InvalidArgumentError(
      absl::StrCat(path, ": ", field, ": ", rule));
}

// mergekit's method -> ours, with the rules that reproduce mergekit.
struct MethodMap {
  const char* name;
  Method method;
  bool floor_count;    // count_rule: floor
  bool positive_sign;  // sign_cancel: positive
};
constexpr MethodMap kMethods[] = {
    {"linear", Method::kLinear, false, false},
    {"slerp", Method::kSlerp, false, false},
    {"task_arithmetic", Method::kTaskArithmetic, false, false},
    {"ties", Method::kTies, true, true},
    {"dare_ties", Method::kDareTies, false, true},
    {"breadcrumbs", Method::kBreadcrumbs, true, false},
    {"della", Method::kDella, false, true},
    {"model_stock", Method::kModelStock, false, false},
};

std::string MethodList() {
  std::vector<std::string> names;
  for (const MethodMap& m : kMethods) names.push_back(m.name);
  return absl::StrJoin(names, ", ");
}

absl::StatusOr<std::string> Text(const YAML::Node& v, const std::string& path,
                                 const std::string& field) {
  if (!v.IsScalar()) return Bad(path, field, "must be a string");
  return v.Scalar();
}

// A scalar parameter value; a list (mergekit's gradient over the layers) or
// a list of {filter, value} is refused by name.
absl::StatusOr<double> Number(const YAML::Node& v, const std::string& path,
                              const std::string& field) {
  if (v.IsSequence()) {
    return Bad(path, field,
               "lists (mergekit gradients over the layers, or filter/value "
               "entries) are not supported here: give one number (lists: "
               "density, t and lambda only)");
  }
  if (!v.IsScalar()) return Bad(path, field, "must be a number");
  try {
    return v.as<double>();
  } catch (const YAML::Exception&) {
    return Bad(path, field,
               absl::StrCat("must be a number, not ", Quote(v.Scalar(), 40)));
  }
}

// A parameter that may vary over the layers (FusionSpec::gradients): a
// number, or mergekit's gradient, a list of numbers, as the spec's JSON (a
// number or a list). filter/value entries are refused by name.
absl::StatusOr<nlohmann::json> NumberOrGradient(const YAML::Node& v,
                                                const std::string& path,
                                                const std::string& field) {
  if (!v.IsSequence()) return Number(v, path, field);
  if (absl::Status s = CheckGradientLength(v.size(), field); !s.ok()) {
    return Bad(path, field, std::string(s.message().substr(field.size() + 2)));
  }
  nlohmann::json list = nlohmann::json::array();
  for (size_t i = 0; i < v.size(); ++i) {
    const std::string item = absl::StrCat(field, "[", i, "]");
    if (v[i].IsMap()) {
      return Bad(path, item,
                 "filter/value entries (per-tensor-name values) are not "
                 "supported: give one number or one list over the layers");
    }
    TAILOR_ASSIGN_OR_RETURN(double d, Number(v[i], path, item));
    list.push_back(d);
  }
  return list;
}

absl::StatusOr<bool> Bool(const YAML::Node& v, const std::string& path,
                          const std::string& field) {
  if (!v.IsScalar()) return Bad(path, field, "must be true or false");
  try {
    return v.as<bool>();
  } catch (const YAML::Exception&) {
    return Bad(
        path, field,
        absl::StrCat("must be true or false, not ", Quote(v.Scalar(), 40)));
  }
}

// The parameters tailor takes one value of per job: a global one, or the
// same value from every model that gives it (a number, or for density a
// list over the layers: the spec's JSON form).
struct JobParameter {
  std::optional<nlohmann::json> value;
  std::string field;  // where it was first given
};

absl::Status SetJobParameter(JobParameter& p, nlohmann::json v,
                             const std::string& path,
                             const std::string& field) {
  if (p.value && *p.value != v) {
    return Bad(
        path, field,
        absl::StrCat(v.dump().substr(0, 100), " differs from ",
                     p.value->dump().substr(0, 100), " given at ", p.field,
                     ": tailor uses one value per job, not per model"));
  }
  p.value = v;
  p.field = field;
  return absl::OkStatus();
}

// A task label from a model path: its last component, with characters
// outside [A-Za-z0-9._-] as '_', at most 100 bytes, unique.
std::string LabelFor(const std::string& model, std::set<std::string>& used) {
  std::string base = model;
  while (!base.empty() && base.back() == '/') base.pop_back();
  const size_t slash = base.rfind('/');
  if (slash != std::string::npos) base = base.substr(slash + 1);
  for (char& c : base) {
    if (!(std::isalnum(static_cast<unsigned char>(c)) || c == '-' || c == '_' ||
          c == '.')) {
      c = '_';
    }
  }
  if (base.empty()) base = "model";
  base = base.substr(0, 90);
  std::string label = base;
  for (int i = 2; !used.insert(label).second; ++i) {
    label = absl::StrCat(base, "-", i);
  }
  return label;
}

}  // namespace

bool IsMergekitConfig(const YAML::Node& root) {
  return root.IsMap() && root["merge_method"].IsDefined();
}

absl::StatusOr<FusionSpec> MergekitToSpec(const YAML::Node& root,
                                          const std::string& path) {
  FusionSpec spec;
  // Top-level fields.
  std::optional<std::string> base_model;
  YAML::Node models, parameters;
  for (const auto& kv : root) {
    const std::string key = kv.first.as<std::string>();
    const YAML::Node& v = kv.second;
    if (key == "merge_method") {
      TAILOR_ASSIGN_OR_RETURN(std::string name, Text(v, path, key));
      const MethodMap* found = nullptr;
      for (const MethodMap& m : kMethods) {
        if (name == m.name) found = &m;
      }
      if (found == nullptr) {
        return Bad(
            path, key,
            absl::StrCat(Quote(name, 40),
                         " is not supported (supported: ", MethodList(), ")"));
      }
      spec.method = found->method;
      if (found->floor_count) spec.count_rule = CountRule::kFloor;
      if (found->positive_sign) spec.sign_cancel = SignCancel::kPositive;
    } else if (key == "base_model") {
      TAILOR_ASSIGN_OR_RETURN(base_model, Text(v, path, key));
    } else if (key == "models") {
      models = v;
    } else if (key == "parameters") {
      parameters = v;
    } else if (key == "dtype") {
      TAILOR_ASSIGN_OR_RETURN(std::string d, Text(v, path, key));
      if (d != "float32" && d != "float16" && d != "bfloat16") {
        return Bad(path, key,
                   absl::StrCat("must be float32, float16 or bfloat16, not ",
                                Quote(d, 40)));
      }
      // tailor computes in float32 (or float64) and writes the base's dtype.
    } else if (key == "slices") {
      return Bad(path, key,
                 "slices (layer ranges) are not supported: list the models "
                 "under models:");
    } else if (key == "tokenizer_source" || key == "tokenizer" ||
               key == "chat_template") {
      return Bad(path, key,
                 "tokenizer settings are not supported: tailor fuses "
                 "weights only");
    } else {
      return Bad(path, key.size() <= 40 ? key : Quote(key, 40),
                 "not supported in a mergekit config (supported: "
                 "merge_method, base_model, models, parameters, dtype)");
    }
  }
  if (!base_model) {
    return Bad(path, "base_model",
               "is required: tailor fuses into a pretrained checkpoint, which "
               "gives the layout and the tensors no model has");
  }
  if (base_model->find('+') != std::string::npos) {
    return Bad(path, "base_model",
               "LoRA '+' references are not supported: give the adapter "
               "directory as the model");
  }
  spec.pretrained_uri = *base_model;

  // Parameters, global then per model.
  JobParameter density, gamma, epsilon;
  std::optional<double> global_weight;
  auto read_parameter = [&](const std::string& name, const YAML::Node& v,
                            const std::string& field,
                            bool per_model) -> absl::Status {
    if (name == "weight") {
      TAILOR_ASSIGN_OR_RETURN(double w, Number(v, path, field));
      if (per_model) return absl::OkStatus();  // read by the caller
      global_weight = w;
    } else if (name == "density") {
      TAILOR_ASSIGN_OR_RETURN(nlohmann::json d,
                              NumberOrGradient(v, path, field));
      return SetJobParameter(density, std::move(d), path, field);
    } else if (name == "gamma") {
      TAILOR_ASSIGN_OR_RETURN(double d, Number(v, path, field));
      return SetJobParameter(gamma, d, path, field);
    } else if (name == "epsilon") {
      TAILOR_ASSIGN_OR_RETURN(double d, Number(v, path, field));
      return SetJobParameter(epsilon, d, path, field);
    } else if (name == "t" && !per_model) {
      TAILOR_ASSIGN_OR_RETURN(nlohmann::json t,
                              NumberOrGradient(v, path, field));
      return ReadNumberOrList(t, field, &spec.t, &spec.gradients.t);
    } else if (name == "lambda" && !per_model) {
      TAILOR_ASSIGN_OR_RETURN(nlohmann::json l,
                              NumberOrGradient(v, path, field));
      return ReadNumberOrList(l, field, &spec.lambda, &spec.gradients.lambda);
    } else if ((name == "normalize" || name == "normalize_weights") &&
               !per_model) {
      TAILOR_ASSIGN_OR_RETURN(bool b, Bool(v, path, field));
      spec.normalize_weights = b;
    } else if (name == "int8_mask" && !per_model) {
      TAILOR_RETURN_IF_ERROR(Bool(v, path, field).status());
    } else if (name == "rescale" && !per_model) {
      TAILOR_ASSIGN_OR_RETURN(bool b, Bool(v, path, field));
      if (!b) {
        return Bad(path, field,
                   "false is not supported: dare_ties and della always "
                   "rescale the survivors (1/p, the papers' rule)");
      }
    } else {
      return Bad(
          path, field,
          absl::StrCat("parameter not supported", per_model ? " per model" : "",
                       " (supported: weight, density, gamma, epsilon",
                       per_model ? ""
                                 : ", t, lambda, normalize, "
                                   "int8_mask, rescale",
                       ")"));
    }
    return absl::OkStatus();
  };
  if (parameters.IsDefined() && !parameters.IsNull()) {
    if (!parameters.IsMap())
      return Bad(path, "parameters", "must be a mapping");
    for (const auto& kv : parameters) {
      const std::string name = kv.first.as<std::string>();
      TAILOR_RETURN_IF_ERROR(read_parameter(
          name, kv.second, absl::StrCat("parameters.", name), false));
    }
  }
  if (!models.IsDefined() || !models.IsSequence() || models.size() == 0) {
    return Bad(path, "models", "must be a non-empty list of {model: ...}");
  }
  std::set<std::string> labels;
  for (size_t i = 0; i < models.size(); ++i) {
    const std::string field = absl::StrCat("models[", i, "]");
    const YAML::Node& m = models[i];
    if (!m.IsMap()) return Bad(path, field, "must be a mapping {model: ...}");
    std::optional<std::string> name;
    std::optional<double> weight = global_weight;
    for (const auto& kv : m) {
      const std::string key = kv.first.as<std::string>();
      const std::string f = absl::StrCat(field, ".", key);
      if (key == "model") {
        TAILOR_ASSIGN_OR_RETURN(name, Text(kv.second, path, f));
      } else if (key == "parameters") {
        if (!kv.second.IsMap()) return Bad(path, f, "must be a mapping");
        for (const auto& p : kv.second) {
          const std::string pn = p.first.as<std::string>();
          const std::string pf = absl::StrCat(f, ".", pn);
          TAILOR_RETURN_IF_ERROR(read_parameter(pn, p.second, pf, true));
          if (pn == "weight") {
            TAILOR_ASSIGN_OR_RETURN(weight, Number(p.second, path, pf));
          }
        }
      } else {
        return Bad(path, f, "not supported (supported: model, parameters)");
      }
    }
    if (!name) return Bad(path, absl::StrCat(field, ".model"), "is required");
    if (name->find('+') != std::string::npos) {
      return Bad(path, absl::StrCat(field, ".model"),
                 "LoRA '+' references are not supported: give the adapter "
                 "directory as the model");
    }
    // mergekit merges the base model's task vector (0) only in linear.
    if (*name == *base_model && spec.method != Method::kLinear) continue;
    TaskSpec t;
    t.finetuned_uri = *name;
    t.label = LabelFor(*name, labels);
    t.weight = weight;
    spec.tasks.push_back(std::move(t));
  }
  if (spec.tasks.empty()) {
    return Bad(path, "models", "lists no model other than base_model");
  }
  // Methods that take no weights: mergekit ignores them; so do we, but
  // Validate would refuse a weight there.
  if (spec.method == Method::kSlerp || spec.method == Method::kModelStock) {
    for (TaskSpec& t : spec.tasks) t.weight.reset();
  }
  // mergekit's density default is 1 (keep everything).
  spec.density = 1.0;
  if (density.value) {
    TAILOR_RETURN_IF_ERROR(ReadNumberOrList(
        *density.value, density.field, &spec.density, &spec.gradients.density));
  }
  // mergekit's dare_ties reads density as the fraction of each task vector
  // KEPT (survivors rescaled by 1 / density); our dare_ties takes DARE's
  // drop probability, so drop = 1 - density. drop has no per-layer form.
  if (spec.method == Method::kDareTies) {
    if (!spec.gradients.density.empty()) {
      return Bad(path, density.field,
                 "a density list is not supported for dare_ties (its drop "
                 "probability has no per-layer form); give one number");
    }
    spec.drop = 1.0 - spec.density;
  }
  if (gamma.value) spec.gamma = gamma.value->get<double>();
  if (epsilon.value) spec.epsilon = epsilon.value->get<double>();
  return spec;
}

}  // namespace tailor::cli
