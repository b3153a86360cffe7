#include "fusion/layer_gradient.h"

#include <algorithm>
#include <cctype>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "nlohmann/json.hpp"
#include "util/field_error.h"

namespace tailor {
namespace {

// A config.json's layer count above this is not a real model's.
constexpr int64_t kMaxLayers = int64_t{1} << 20;

bool AllDigits(absl::string_view s) {
  return !s.empty() && std::all_of(s.begin(), s.end(), [](char c) {
    return std::isdigit(static_cast<unsigned char>(c));
  });
}

}  // namespace

absl::Status CheckGradientLength(size_t n, absl::string_view field) {
  if (n >= 1 && n <= kMaxGradientValues) return absl::OkStatus();
  return FieldError(field,
                    absl::StrCat("a list over the layers holds 1 to ",
                                 kMaxGradientValues, " numbers, not ", n));
}

std::optional<int64_t> LayerIndexOf(absl::string_view tensor_name) {
  const std::vector<absl::string_view> parts = absl::StrSplit(tensor_name, '.');
  // Components 1 .. size-2: a dot on each side.
  for (size_t i = 1; i + 1 < parts.size(); ++i) {
    if (!AllDigits(parts[i])) continue;
    if (parts[i].size() > 9) return std::nullopt;
    int64_t index = 0;
    if (!absl::SimpleAtoi(parts[i], &index)) return std::nullopt;
    return index;
  }
  return std::nullopt;
}

absl::StatusOr<int64_t> CountLayers(
    const std::vector<std::string>& names,
    const std::optional<std::string>& config_json,
    absl::string_view config_name) {
  int64_t from_names = 0;
  std::string deepest;
  for (const std::string& name : names) {
    if (std::optional<int64_t> i = LayerIndexOf(name); i && *i >= from_names) {
      from_names = *i + 1;
      deepest = name;
    }
  }
  if (!config_json) return from_names;
  const nlohmann::json config =
      nlohmann::json::parse(*config_json, nullptr, /*allow_exceptions=*/false);
  if (!config.is_object()) {
    return FieldError(config_name, "is not a JSON object");
  }
  const auto it = config.find("num_hidden_layers");
  if (it == config.end()) return from_names;
  if (!it->is_number_unsigned() || it->get<uint64_t>() == 0 ||
      it->get<uint64_t>() > static_cast<uint64_t>(kMaxLayers)) {
    return FieldError(config_name,
                      absl::StrCat("num_hidden_layers must be an integer in "
                                   "[1, ",
                                   kMaxLayers, "]"));
  }
  const int64_t layers = static_cast<int64_t>(it->get<uint64_t>());
  if (layers < from_names) {
    return FieldError(
        config_name,
        absl::StrCat("num_hidden_layers is ", layers, " but tensor '",
                     deepest.substr(0, 200), "' is in layer ", from_names - 1,
                     ": per-layer parameters need every layer index below "
                     "the layer count"));
  }
  return layers;
}

double GradientPosition(std::optional<int64_t> layer, int64_t num_layers) {
  // mergekit/plan.py: plan_module plans the tensors outside the layers
  // with t = 0; plan_slice gives layer idx t = idx / (num_layers - 1), or
  // 1 for a single layer.
  if (!layer) return 0.0;
  if (num_layers <= 1) return 1.0;
  return static_cast<double>(*layer) / static_cast<double>(num_layers - 1);
}

double EvaluateGradient(const std::vector<double>& values, double t) {
  // mergekit/config.py evaluate_setting, for a list of numbers.
  const double scaled = t * static_cast<double>(values.size() - 1);
  const size_t i0 = std::min(static_cast<size_t>(scaled), values.size() - 1);
  const size_t i1 = std::min(values.size() - 1, i0 + 1);
  const double frac = scaled - static_cast<double>(i0);
  return (1 - frac) * values[i0] + frac * values[i1];
}

}  // namespace tailor
