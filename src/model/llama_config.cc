#include "model/llama_config.h"

#include <algorithm>
#include <cmath>
#include <limits>

#include "absl/strings/str_cat.h"
#include "storage/read_local_file.h"
#include "storage/uri_resolver.h"
#include "util/file_util.h"
#include "util/json_util.h"
#include "util/status_macros.h"

namespace tailor {
namespace {

using Json = nlohmann::json;

// config.json files are a few KB; anything this large is not one.
constexpr uint64_t kMaxConfigBytes = 16 << 20;
// Bounds that keep every shape product far from int64 overflow.
constexpr int64_t kMaxDimension = int64_t{1} << 24;
constexpr int64_t kMaxLayers = 4096;

class Fields {
 public:
  Fields(const Json& json, absl::string_view label)
      : json_(json), label_(label) {}

  absl::Status Error(absl::string_view field, absl::string_view message) const {
    return absl::InvalidArgumentError(
        absl::StrCat(label_, ": field '", field, "' ", message));
  }

  // The value of `field`, or nullptr when absent or null.
  const Json* Get(const char* field) const {
    auto it = json_.find(field);
    if (it == json_.end() || it->is_null()) return nullptr;
    return &*it;
  }

  absl::StatusOr<std::optional<int64_t>> Int(const char* field) const {
    const Json* v = Get(field);
    if (v == nullptr) return std::optional<int64_t>();
    if (v->is_number_unsigned()) {
      const uint64_t u = v->get<uint64_t>();
      if (u > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) {
        return Error(field, "is out of range");
      }
      return std::optional<int64_t>(static_cast<int64_t>(u));
    }
    if (v->is_number_integer()) {
      return std::optional<int64_t>(v->get<int64_t>());
    }
    return Error(field, absl::StrCat("must be an integer, got ", v->dump()));
  }

  absl::StatusOr<int64_t> RequiredInt(const char* field) const {
    TAILOR_ASSIGN_OR_RETURN(std::optional<int64_t> v, Int(field));
    if (!v.has_value()) return Error(field, "is required");
    return *v;
  }

  absl::StatusOr<std::optional<double>> Number(const char* field) const {
    const Json* v = Get(field);
    if (v == nullptr) return std::optional<double>();
    if (!v->is_number()) {
      return Error(field, absl::StrCat("must be a number, got ", v->dump()));
    }
    return std::optional<double>(v->get<double>());
  }

  absl::StatusOr<std::optional<bool>> Bool(const char* field) const {
    const Json* v = Get(field);
    if (v == nullptr) return std::optional<bool>();
    if (!v->is_boolean()) {
      return Error(field,
                   absl::StrCat("must be true or false, got ", v->dump()));
    }
    return std::optional<bool>(v->get<bool>());
  }

  absl::StatusOr<std::optional<std::string>> String(const char* field) const {
    const Json* v = Get(field);
    if (v == nullptr) return std::optional<std::string>();
    if (!v->is_string()) {
      return Error(field, absl::StrCat("must be a string, got ", v->dump()));
    }
    return std::optional<std::string>(v->get<std::string>());
  }

 private:
  const Json& json_;
  std::string label_;
};

absl::Status CheckModelType(const Fields& f) {
  TAILOR_ASSIGN_OR_RETURN(std::optional<std::string> model_type,
                          f.String("model_type"));
  if (model_type.has_value()) {
    if (*model_type != "llama") {
      return f.Error("model_type",
                     absl::StrCat("is '", *model_type,
                                  "'; only 'llama' (LlamaForCausalLM) is "
                                  "supported"));
    }
    return absl::OkStatus();
  }
  const Json* arch = f.Get("architectures");
  if (arch != nullptr && arch->is_array() &&
      std::find(arch->begin(), arch->end(), Json("LlamaForCausalLM")) !=
          arch->end()) {
    return absl::OkStatus();
  }
  return f.Error("model_type",
                 "is absent and architectures does not contain "
                 "'LlamaForCausalLM'; not a LLaMA config");
}

// A rope_type that means plain RoPE.
bool IsDefaultRope(const Json& rope) {
  for (const char* key : {"rope_type", "type"}) {
    auto it = rope.find(key);
    if (it != rope.end()) return it->is_string() && *it == "default";
  }
  return false;
}

absl::Status CheckUnsupported(const Fields& f) {
  if (const Json* rope = f.Get("rope_scaling"); rope != nullptr) {
    if (!rope->is_object() || !IsDefaultRope(*rope)) {
      return f.Error("rope_scaling",
                     absl::StrCat("is ", rope->dump(),
                                  "; RoPE scaling (linear, dynamic, yarn, "
                                  "llama3, ...) is not supported: only plain "
                                  "RoPE (rope_scaling null)"));
    }
  }
  TAILOR_ASSIGN_OR_RETURN(std::optional<bool> attention_bias,
                          f.Bool("attention_bias"));
  if (attention_bias.value_or(false)) {
    return f.Error("attention_bias",
                   "is true; attention projections with biases are not "
                   "supported");
  }
  TAILOR_ASSIGN_OR_RETURN(std::optional<bool> mlp_bias, f.Bool("mlp_bias"));
  if (mlp_bias.value_or(false)) {
    return f.Error("mlp_bias",
                   "is true; MLP projections with biases are not supported");
  }
  TAILOR_ASSIGN_OR_RETURN(std::optional<std::string> act,
                          f.String("hidden_act"));
  if (act.has_value() && *act != "silu") {
    return f.Error(
        "hidden_act",
        absl::StrCat("is '", *act, "'; only 'silu' (SwiGLU MLP) is supported"));
  }
  TAILOR_ASSIGN_OR_RETURN(std::optional<int64_t> tp, f.Int("pretraining_tp"));
  if (tp.has_value() && *tp > 1) {
    return f.Error(
        "pretraining_tp",
        absl::StrCat("is ", *tp, "; only pretraining_tp = 1 is supported"));
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<LlamaConfig> LlamaConfig::FromJson(const nlohmann::json& json,
                                                  absl::string_view label) {
  if (!json.is_object()) {
    return absl::InvalidArgumentError(
        absl::StrCat(label, ": a model config must be a JSON object"));
  }
  const Fields f(json, label);
  TAILOR_RETURN_IF_ERROR(CheckModelType(f));
  TAILOR_RETURN_IF_ERROR(CheckUnsupported(f));

  LlamaConfig c;
  TAILOR_ASSIGN_OR_RETURN(c.hidden_size, f.RequiredInt("hidden_size"));
  TAILOR_ASSIGN_OR_RETURN(c.intermediate_size,
                          f.RequiredInt("intermediate_size"));
  TAILOR_ASSIGN_OR_RETURN(c.num_hidden_layers,
                          f.RequiredInt("num_hidden_layers"));
  TAILOR_ASSIGN_OR_RETURN(c.num_attention_heads,
                          f.RequiredInt("num_attention_heads"));
  TAILOR_ASSIGN_OR_RETURN(c.vocab_size, f.RequiredInt("vocab_size"));
  TAILOR_ASSIGN_OR_RETURN(std::optional<int64_t> kv,
                          f.Int("num_key_value_heads"));
  c.num_key_value_heads = kv.value_or(c.num_attention_heads);
  TAILOR_ASSIGN_OR_RETURN(std::optional<double> eps, f.Number("rms_norm_eps"));
  if (eps.has_value()) c.rms_norm_eps = *eps;
  TAILOR_ASSIGN_OR_RETURN(std::optional<double> theta, f.Number("rope_theta"));
  if (theta.has_value()) c.rope_theta = *theta;
  // transformers v5 moves rope_theta into rope_parameters.
  if (const Json* rope = f.Get("rope_parameters"); rope != nullptr) {
    if (!rope->is_object() || !IsDefaultRope(*rope)) {
      return f.Error("rope_parameters",
                     absl::StrCat("is ", rope->dump(),
                                  "; only rope_type 'default' (plain RoPE) "
                                  "is supported"));
    }
    auto t = rope->find("rope_theta");
    if (t != rope->end()) {
      if (!t->is_number()) {
        return f.Error("rope_parameters", "has a non-numeric rope_theta");
      }
      if (theta.has_value() && *theta != t->get<double>()) {
        return f.Error("rope_parameters",
                       "has a rope_theta that disagrees with the top-level "
                       "rope_theta");
      }
      c.rope_theta = t->get<double>();
    }
  }
  TAILOR_ASSIGN_OR_RETURN(std::optional<bool> tie,
                          f.Bool("tie_word_embeddings"));
  c.tie_word_embeddings = tie.value_or(false);
  TAILOR_ASSIGN_OR_RETURN(c.max_position_embeddings,
                          f.Int("max_position_embeddings"));
  TAILOR_ASSIGN_OR_RETURN(std::optional<double> init,
                          f.Number("initializer_range"));
  if (init.has_value()) c.initializer_range = *init;

  absl::Status valid = c.Validate();
  if (!valid.ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat(label, ": ", valid.message()));
  }
  // Checked after Validate() so head_dim() is well defined.
  TAILOR_ASSIGN_OR_RETURN(std::optional<int64_t> head_dim, f.Int("head_dim"));
  if (head_dim.has_value() && *head_dim != c.head_dim()) {
    return f.Error("head_dim", absl::StrCat("is ", *head_dim,
                                            "; only head_dim = hidden_size / "
                                            "num_attention_heads = ",
                                            c.head_dim(), " is supported"));
  }
  return c;
}

absl::Status LlamaConfig::Validate() const {
  auto error = [](absl::string_view field, absl::string_view message) {
    return absl::InvalidArgumentError(
        absl::StrCat("field '", field, "' ", message));
  };
  const std::pair<const char*, int64_t> sizes[] = {
      {"hidden_size", hidden_size},
      {"intermediate_size", intermediate_size},
      {"num_hidden_layers", num_hidden_layers},
      {"num_attention_heads", num_attention_heads},
      {"num_key_value_heads", num_key_value_heads},
      {"vocab_size", vocab_size},
  };
  for (const auto& [field, value] : sizes) {
    if (value <= 0) {
      return error(field, absl::StrCat("is ", value, "; must be positive"));
    }
    const int64_t limit =
        field == std::string("num_hidden_layers") ? kMaxLayers : kMaxDimension;
    if (value > limit) {
      return error(field,
                   absl::StrCat("is ", value, "; must be at most ", limit));
    }
  }
  if (hidden_size % num_attention_heads != 0) {
    return error("hidden_size",
                 absl::StrCat("(", hidden_size,
                              ") must be divisible by num_attention_heads (",
                              num_attention_heads, ")"));
  }
  if (head_dim() % 2 != 0) {
    return error("hidden_size",
                 absl::StrCat("/ num_attention_heads = ", head_dim(),
                              " must be even (RoPE rotates pairs)"));
  }
  if (num_attention_heads % num_key_value_heads != 0) {
    return error("num_attention_heads",
                 absl::StrCat("(", num_attention_heads,
                              ") must be divisible by num_key_value_heads (",
                              num_key_value_heads, ")"));
  }
  if (!std::isfinite(rms_norm_eps) || rms_norm_eps <= 0) {
    return error("rms_norm_eps",
                 absl::StrCat("is ", rms_norm_eps, "; must be finite and > 0"));
  }
  if (!std::isfinite(rope_theta) || rope_theta <= 0) {
    return error("rope_theta",
                 absl::StrCat("is ", rope_theta, "; must be finite and > 0"));
  }
  if (!std::isfinite(initializer_range) || initializer_range < 0) {
    return error(
        "initializer_range",
        absl::StrCat("is ", initializer_range, "; must be finite and >= 0"));
  }
  if (max_position_embeddings.has_value() && *max_position_embeddings <= 0) {
    return error(
        "max_position_embeddings",
        absl::StrCat("is ", *max_position_embeddings, "; must be positive"));
  }
  return absl::OkStatus();
}

absl::StatusOr<LlamaConfig> LlamaConfig::Load(const std::string& path,
                                              const UriResolver* resolver) {
  const std::string file =
      IsDirectory(path) ? JoinPath(path, "config.json") : path;
  TAILOR_ASSIGN_OR_RETURN(const std::string text,
                          ReadLocalFile(resolver, file, kMaxConfigBytes));
  TAILOR_ASSIGN_OR_RETURN(Json json, ParseJsonStrict(text, file));
  return FromJson(json, file);
}

nlohmann::json LlamaConfig::ToJson() const {
  Json j = {
      {"architectures", Json::array({"LlamaForCausalLM"})},
      {"model_type", "llama"},
      {"hidden_size", hidden_size},
      {"intermediate_size", intermediate_size},
      {"num_hidden_layers", num_hidden_layers},
      {"num_attention_heads", num_attention_heads},
      {"num_key_value_heads", num_key_value_heads},
      {"head_dim", head_dim()},
      {"rms_norm_eps", rms_norm_eps},
      {"rope_theta", rope_theta},
      {"rope_scaling", nullptr},
      {"vocab_size", vocab_size},
      {"tie_word_embeddings", tie_word_embeddings},
      {"hidden_act", "silu"},
      {"attention_bias", false},
      {"mlp_bias", false},
      {"pretraining_tp", 1},
      {"initializer_range", initializer_range},
  };
  if (max_position_embeddings.has_value()) {
    j["max_position_embeddings"] = *max_position_embeddings;
  }
  return j;
}

bool LlamaConfig::operator==(const LlamaConfig& o) const {
  return hidden_size == o.hidden_size &&
         intermediate_size == o.intermediate_size &&
         num_hidden_layers == o.num_hidden_layers &&
         num_attention_heads == o.num_attention_heads &&
         num_key_value_heads == o.num_key_value_heads &&
         rms_norm_eps == o.rms_norm_eps && rope_theta == o.rope_theta &&
         vocab_size == o.vocab_size &&
         tie_word_embeddings == o.tie_word_embeddings &&
         max_position_embeddings == o.max_position_embeddings &&
         initializer_range == o.initializer_range;
}

}  // namespace tailor
