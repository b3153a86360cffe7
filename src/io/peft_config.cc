#include "io/peft_config.h"

#include <climits>
#include <cmath>
#include <utility>

#include "absl/strings/str_cat.h"
#include "nlohmann/json.hpp"
#include "util/json_util.h"
#include "util/quote.h"
#include "util/status_macros.h"

namespace tailor {
namespace {

using Json = nlohmann::json;

absl::Status ConfigError(absl::string_view path, absl::string_view field,
                         absl::string_view message) {
  return absl::InvalidArgumentError(
      absl::StrCat(path, ": ", Quote(field), " ", message));
}

// A config value that turns an option on: anything but null, false, 0, "",
// [] or {}.
bool IsSet(const Json& v) {
  if (v.is_null()) return false;
  if (v.is_boolean()) return v.get<bool>();
  if (v.is_string()) return !v.get_ref<const std::string&>().empty();
  if (v.is_array() || v.is_object()) return !v.empty();
  if (v.is_number()) return v.get<double>() != 0;
  return true;
}

absl::StatusOr<bool> OptionalBool(const Json& config, absl::string_view path,
                                  const char* field) {
  auto it = config.find(field);
  if (it == config.end() || it->is_null()) return false;
  if (!it->is_boolean()) {
    return ConfigError(path, field,
                       absl::StrCat("must be true or false, not ", it->dump()));
  }
  return it->get<bool>();
}

absl::StatusOr<int> PositiveInt(const Json& v, absl::string_view path,
                                absl::string_view field) {
  // nlohmann stores non-negative integers as unsigned, negative ones signed.
  if (!v.is_number_unsigned() || v.get<uint64_t>() == 0 ||
      v.get<uint64_t>() > static_cast<uint64_t>(INT_MAX)) {
    return ConfigError(
        path, field,
        absl::StrCat("must be a positive integer, not ", v.dump()));
  }
  return static_cast<int>(v.get<uint64_t>());
}

absl::StatusOr<double> FiniteNumber(const Json& v, absl::string_view path,
                                    absl::string_view field) {
  if (!v.is_number() || !std::isfinite(v.get<double>())) {
    return ConfigError(path, field,
                       absl::StrCat("must be a finite number, not ", v.dump()));
  }
  return v.get<double>();
}

absl::StatusOr<std::vector<std::string>> StringList(const Json& v,
                                                    absl::string_view path,
                                                    absl::string_view field) {
  std::vector<std::string> out;
  if (v.is_null()) return out;
  if (v.is_string()) {  // target_modules may be one regular expression
    out.push_back(v.get<std::string>());
    return out;
  }
  if (!v.is_array()) {
    return ConfigError(path, field, "must be a list of module names");
  }
  for (const Json& e : v) {
    if (!e.is_string()) {
      return ConfigError(path, field,
                         absl::StrCat("must list strings, not ", e.dump()));
    }
    out.push_back(e.get<std::string>());
  }
  return out;
}

absl::StatusOr<std::vector<PeftPattern>> ParsePatterns(
    const nlohmann::ordered_json& config, absl::string_view path,
    const char* field, bool integer) {
  std::vector<PeftPattern> out;
  auto it = config.find(field);
  if (it == config.end() || it->is_null()) return out;
  if (!it->is_object()) {
    return ConfigError(path, field,
                       "must be an object mapping module patterns to values");
  }
  for (auto p = it->begin(); p != it->end(); ++p) {
    const std::string label = absl::StrCat(field, "[", Quote(p.key()), "]");
    PeftPattern pattern;
    pattern.key = p.key();
    if (integer) {
      TAILOR_ASSIGN_OR_RETURN(int r, PositiveInt(Json(p.value()), path, label));
      pattern.value = r;
    } else {
      TAILOR_ASSIGN_OR_RETURN(pattern.value,
                              FiniteNumber(Json(p.value()), path, label));
    }
    // PEFT: re.match(rf"(.*\.)?({key})$", module_name).
    absl::StatusOr<Regex> re =
        Regex::Compile(absl::StrCat("(.*\\.)?(", p.key(), ")"), label);
    if (!re.ok()) {
      return absl::InvalidArgumentError(absl::StrCat(
          path, ": ", re.status().message(),
          " (PEFT matches pattern keys as regular expressions against module "
          "names)"));
    }
    pattern.regex = *std::move(re);
    out.push_back(std::move(pattern));
  }
  return out;
}

}  // namespace

const PeftPattern* MatchPeftPattern(const std::vector<PeftPattern>& patterns,
                                    const std::string& module) {
  for (const PeftPattern& p : patterns) {
    if (p.regex.FullMatch(module)) return &p;
  }
  return nullptr;
}

absl::StatusOr<PeftConfig> ParsePeftConfig(const std::string& path,
                                           const std::string& text) {
  TAILOR_ASSIGN_OR_RETURN(Json config, ParseJsonStrict(text, path));
  if (!config.is_object()) {
    return absl::InvalidArgumentError(
        absl::StrCat(path, ": the adapter config must be a JSON object"));
  }
  PeftConfig parsed;
  LoraConfig& out = parsed.config;

  auto peft_type = config.find("peft_type");
  if (peft_type == config.end() || peft_type->is_null()) {
    return ConfigError(path, "peft_type",
                       "is missing; only PEFT LoRA adapters (\"peft_type\": "
                       "\"LORA\") are supported");
  }
  if (!peft_type->is_string() || peft_type->get<std::string>() != "LORA") {
    return ConfigError(
        path, "peft_type",
        absl::StrCat("is ", peft_type->dump(),
                     "; only PEFT LoRA adapters (\"LORA\") are supported"));
  }

  // Variants whose merged weight is not W + scaling * B @ A over the
  // original base weights.
  struct Refused {
    const char* field;
    const char* why;
  };
  static constexpr Refused kRefused[] = {
      {"use_dora",
       "is set: DoRA (weight-decomposed LoRA) rescales each merged column by a "
       "learned magnitude and is not supported"},
      {"lora_bias",
       "is set: LoRA with a trainable lora_B bias is not supported"},
      {"use_qalora",
       "is set: QALoRA pools the layer input and is not supported"},
      {"layer_replication",
       "is set: the adapter targets replicated layers that the base checkpoint "
       "does not hold"},
      {"trainable_token_indices",
       "is set: trainable-token deltas are not supported"},
      {"target_parameters",
       "is set: LoRA on bare parameters (e.g. MoE experts) is not supported"},
      {"alora_invocation_tokens",
       "is set: activated LoRA applies only after its invocation tokens and "
       "cannot be merged into the weights"},
  };
  for (const Refused& r : kRefused) {
    auto it = config.find(r.field);
    if (it != config.end() && IsSet(*it)) {
      return ConfigError(path, r.field, r.why);
    }
  }
  if (auto it = config.find("init_lora_weights");
      it != config.end() && !it->is_null() && !it->is_boolean()) {
    const std::string mode = it->is_string() ? it->get<std::string>() : "";
    if (mode != "gaussian" && mode != "eva" && mode != "orthogonal") {
      return ConfigError(
          path, "init_lora_weights",
          absl::StrCat(
              "is ", it->dump(),
              ": this initialisation (PiSSA, OLoRA, CorDA, LoftQ, ...) "
              "trains against modified base weights, so merging over the "
              "original base would be wrong; convert the adapter to plain "
              "LoRA with PEFT (save_pretrained(..., "
              "path_initial_model_for_weight_conversion=...)) first"));
    }
  }

  auto r = config.find("r");
  if (r == config.end()) {
    return ConfigError(path, "r", "is missing (the LoRA rank)");
  }
  TAILOR_ASSIGN_OR_RETURN(out.r, PositiveInt(*r, path, "r"));
  auto alpha = config.find("lora_alpha");
  if (alpha == config.end()) {
    return ConfigError(path, "lora_alpha", "is missing");
  }
  TAILOR_ASSIGN_OR_RETURN(out.lora_alpha,
                          FiniteNumber(*alpha, path, "lora_alpha"));
  TAILOR_ASSIGN_OR_RETURN(out.fan_in_fan_out,
                          OptionalBool(config, path, "fan_in_fan_out"));
  TAILOR_ASSIGN_OR_RETURN(out.use_rslora,
                          OptionalBool(config, path, "use_rslora"));
  if (auto it = config.find("modules_to_save"); it != config.end()) {
    TAILOR_ASSIGN_OR_RETURN(out.modules_to_save,
                            StringList(*it, path, "modules_to_save"));
  }
  if (auto it = config.find("target_modules"); it != config.end()) {
    // Informational only: the adapter file says what was adapted.
    absl::StatusOr<std::vector<std::string>> targets =
        StringList(*it, path, "target_modules");
    if (targets.ok()) out.target_modules = *std::move(targets);
  }

  // Pattern order matters (first match wins), so read them from an
  // order-preserving parse of the already validated text.
  const nlohmann::ordered_json ordered = nlohmann::ordered_json::parse(
      text, /*cb=*/nullptr, /*allow_exceptions=*/false);
  if (ordered.is_discarded() || !ordered.is_object()) {
    return absl::InternalError(
        absl::StrCat(path, ": re-parsing the validated config failed"));
  }
  TAILOR_ASSIGN_OR_RETURN(parsed.rank_patterns,
                          ParsePatterns(ordered, path, "rank_pattern", true));
  TAILOR_ASSIGN_OR_RETURN(parsed.alpha_patterns,
                          ParsePatterns(ordered, path, "alpha_pattern", false));
  for (const PeftPattern& p : parsed.rank_patterns) {
    out.rank_pattern[p.key] = static_cast<int>(p.value);
  }
  for (const PeftPattern& p : parsed.alpha_patterns) {
    out.alpha_pattern[p.key] = p.value;
  }
  return parsed;
}

}  // namespace tailor
