#include "fusion/spec_gradients.h"

#include <cmath>

#include "absl/strings/str_cat.h"
#include "fusion/layer_gradient.h"
#include "util/field_error.h"

namespace tailor {
namespace {

// The scalar a list replaces.
double* MutableScalar(FusionSpec& s, absl::string_view key) {
  if (key == "keep") return &s.tailor.keep_ratio;
  if (key == "omega") return &s.tailor.omega;
  if (key == "lambda") return &s.lambda;
  if (key == "density") return &s.density;
  return &s.t;
}

// The scalar's rule for one value of `key`'s list: "" if `v` keeps it.
std::string RangeRule(const FusionSpec& s, absl::string_view key, double v) {
  if (key == "keep") return v > 0 && v <= 1 ? "" : "must be in (0, 1]";
  if (key == "omega" || key == "t") {
    return v >= 0 && v <= 1 ? "" : "must be in [0, 1]";
  }
  if (key == "lambda") {
    return v > 0 && std::isfinite(v) ? "" : "must be a finite number > 0";
  }
  if (!(v > 0 && v <= 1)) return "must be in (0, 1]";
  if (s.method == Method::kDella && v < 1 &&
      !(v - s.epsilon > 0 && v + s.epsilon <= 1)) {
    return absl::StrCat(
        "della keeps entries with probabilities density +- epsilon, which "
        "must lie in (0, 1]; epsilon ",
        s.epsilon);
  }
  return "";
}

}  // namespace

double ScalarOf(const FusionSpec& spec, absl::string_view key) {
  return *MutableScalar(const_cast<FusionSpec&>(spec), key);
}

const std::vector<absl::string_view>& GradientKeys() {
  static const auto* keys = new std::vector<absl::string_view>{
      "keep", "omega", "lambda", "density", "t"};
  return *keys;
}

std::vector<double>& GradientOf(LayerGradients& g, absl::string_view key) {
  if (key == "keep") return g.keep;
  if (key == "omega") return g.omega;
  if (key == "lambda") return g.lambda;
  if (key == "density") return g.density;
  return g.t;
}

const std::vector<double>& GradientOf(const LayerGradients& g,
                                      absl::string_view key) {
  return GradientOf(const_cast<LayerGradients&>(g), key);
}

absl::Status ReadNumberOrList(const nlohmann::json& v, absl::string_view key,
                              double* scalar, std::vector<double>* list) {
  if (v.is_number()) {
    *scalar = v.get<double>();
    list->clear();
    return absl::OkStatus();
  }
  if (!v.is_array()) {
    return FieldError(key,
                      "must be a number, or a list of numbers over the layers");
  }
  if (absl::Status s = CheckGradientLength(v.size(), key); !s.ok()) return s;
  std::vector<double> values;
  for (size_t i = 0; i < v.size(); ++i) {
    if (!v[i].is_number()) {
      return FieldError(absl::StrCat(key, "[", i, "]"), "must be a number");
    }
    values.push_back(v[i].get<double>());
  }
  *list = std::move(values);
  return absl::OkStatus();
}

absl::Status ValidateGradients(const FusionSpec& spec) {
  for (absl::string_view key : GradientKeys()) {
    const std::vector<double>& list = GradientOf(spec.gradients, key);
    if (!list.empty()) {
      if (absl::Status s = CheckGradientLength(list.size(), key); !s.ok()) {
        return s;
      }
    }
    for (size_t i = 0; i < list.size(); ++i) {
      const std::string rule = RangeRule(spec, key, list[i]);
      if (!rule.empty()) {
        return FieldError(absl::StrCat(key, "[", i, "]"),
                          absl::StrCat(rule, ", not ", list[i]));
      }
    }
  }
  return absl::OkStatus();
}

void GradientsToJson(const FusionSpec& spec, nlohmann::json* j) {
  for (absl::string_view key : GradientKeys()) {
    const std::vector<double>& list = GradientOf(spec.gradients, key);
    if (!list.empty()) (*j)[std::string(key)] = list;
  }
}

FusionSpec SpecAtPosition(const FusionSpec& spec, double t) {
  FusionSpec out = spec;
  for (absl::string_view key : GradientKeys()) {
    const std::vector<double>& list = GradientOf(spec.gradients, key);
    if (!list.empty()) *MutableScalar(out, key) = EvaluateGradient(list, t);
  }
  out.gradients = LayerGradients{};
  return out;
}

}  // namespace tailor
