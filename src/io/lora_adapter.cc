#include "io/lora_adapter.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <climits>
#include <cmath>
#include <cstring>
#include <optional>
#include <set>
#include <utility>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "io/tensor_convert.h"
#include "nlohmann/json.hpp"
#include "util/file_util.h"
#include "util/json_util.h"
#include "util/quote.h"
#include "util/regex.h"
#include "util/status_macros.h"
#include "util/torch_status.h"

// How a PEFT LoRA adapter directory is read (PEFT's own code is the
// reference: peft/utils/save_and_load.py, peft/tuners/lora/{config,layer,
// model}.py, peft/utils/other.py).
//
// Keys. get_peft_model_state_dict() saves every tensor under the PeftModel's
// name, "base_model.model.<module path>...", with the adapter name removed:
//   <module>.lora_A.weight, <module>.lora_B.weight        (Linear, Conv1D)
//   <module>.lora_embedding_A, <module>.lora_embedding_B  (Embedding)
//   <module>.<param>          (modules_to_save copies, biases with bias="all"
//                              or "lora_only", embeddings saved with
//                              save_embedding_layers)
// Files written from a raw state_dict() still carry the adapter name
// (".lora_A.default.weight", ".lora_embedding_A.default",
// ".modules_to_save.default.weight"); those forms are accepted too, with any
// single adapter name, but one module may not appear twice.
//
// Full tensors (anything that is not a LoRA factor) replace the base tensor
// of the same name, which is what PEFT's loader does with them; a
// ".base_layer." component (how PEFT names the wrapped layer's own bias) is
// dropped. A full tensor for a tensor that is also LoRA-merged is refused.
//
// Merge (LoraLayer.get_delta_weight):
//   Linear:    W += scaling * B @ A         (B @ A transposed if
//   fan_in_fan_out) Embedding: W += scaling * (B @ A)^T     A: (r,
//   num_embeddings), B: (dim, r) scaling = alpha / r, or alpha / sqrt(r) with
//   use_rslora, where r and alpha come from rank_pattern / alpha_pattern when a
//   key matches the module.
//
// rank_pattern / alpha_pattern. PEFT's get_pattern_key() returns the first key,
// in the file's (dict) order, for which re.match(rf"(.*\.)?({key})$", module)
// succeeds: keys are regular expressions matched against the whole module
// name or a dot-separated suffix of it, and rank and alpha are looked up
// independently. We do the same with RE2 (a full match of
// "(.*\.)?(<key>)", i.e. Python's re.fullmatch; RE2 agrees with Python's re
// on the constructs such keys use, and matches in linear time whatever the
// key, which a hostile config could otherwise exploit); a key RE2 cannot
// compile (backreferences, lookaround, longer than 1000 bytes) is refused
// rather than guessed.
//
// Base names. The adapter's module path is the name inside the model PEFT
// wrapped (e.g. "model.layers.0.self_attn.q_proj" for a *ForCausalLM), and the
// base tensor is "<module>.weight". If the wrapped model and the base
// checkpoint disagree on the transformers base-model prefix (adapter trained
// on LlamaModel: "layers.0..." against a checkpoint holding
// "model.layers.0..."; or GPT-2's "transformer.h.0..." against a checkpoint
// holding "h.0..."), the names are mapped the way transformers' from_pretrained
// maps such checkpoints: one prefix component is added to every name, or
// stripped from every name that has it. A mapping is only used when it resolves
// every adapter tensor (the exact names are always preferred); otherwise the
// first unresolved tensor is NOT_FOUND, naming the names tried.

namespace tailor {
namespace {

using Json = nlohmann::json;

// Real adapter configs are a few KB; EVA/rank_pattern-heavy ones stay well
// under 1 MB.
constexpr uint64_t kMaxConfigBytes = 16ull << 20;
constexpr absl::string_view kPeftPrefix = "base_model.model.";

// ---------------------------------------------------------------------------
// adapter_config.json

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

// One rank_pattern / alpha_pattern entry, compiled.
struct Pattern {
  std::string key;
  Regex regex;
  double value = 0;
};

absl::StatusOr<std::vector<Pattern>> ParsePatterns(
    const nlohmann::ordered_json& config, absl::string_view path,
    const char* field, bool integer) {
  std::vector<Pattern> out;
  auto it = config.find(field);
  if (it == config.end() || it->is_null()) return out;
  if (!it->is_object()) {
    return ConfigError(path, field,
                       "must be an object mapping module patterns to values");
  }
  for (auto p = it->begin(); p != it->end(); ++p) {
    const std::string label = absl::StrCat(field, "[", Quote(p.key()), "]");
    Pattern pattern;
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

// PEFT's get_pattern_key: the first pattern (in file order) matching the
// whole module name or a dot-separated suffix of it.
const Pattern* MatchPattern(const std::vector<Pattern>& patterns,
                            const std::string& module) {
  for (const Pattern& p : patterns) {
    if (p.regex.FullMatch(module)) return &p;
  }
  return nullptr;
}

struct ParsedConfig {
  LoraConfig config;
  std::vector<Pattern> rank_patterns;   // file order
  std::vector<Pattern> alpha_patterns;  // file order
};

absl::StatusOr<ParsedConfig> ParseConfig(const std::string& path,
                                         const std::string& text) {
  TAILOR_ASSIGN_OR_RETURN(Json config, ParseJsonStrict(text, path));
  if (!config.is_object()) {
    return absl::InvalidArgumentError(
        absl::StrCat(path, ": the adapter config must be a JSON object"));
  }
  ParsedConfig parsed;
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
  for (const Pattern& p : parsed.rank_patterns) {
    out.rank_pattern[p.key] = static_cast<int>(p.value);
  }
  for (const Pattern& p : parsed.alpha_patterns) {
    out.alpha_pattern[p.key] = p.value;
  }
  return parsed;
}

// ---------------------------------------------------------------------------
// adapter_model.safetensors keys

enum class Factor { kA, kB };

struct ParsedKey {
  bool lora = false;
  // LoRA factor: the PEFT module path, which factor, and whether it is an
  // embedding LoRA (lora_embedding_A/B).
  std::string module;
  Factor factor = Factor::kA;
  bool embedding = false;
  // Full tensor: the tensor it replaces, before base-name mapping.
  std::string target;
};

absl::Status KeyError(absl::string_view file, absl::string_view key,
                      absl::string_view message) {
  return absl::InvalidArgumentError(
      absl::StrCat(file, ": tensor ", Quote(key), ": ", message));
}

absl::StatusOr<ParsedKey> ParseKey(absl::string_view file,
                                   absl::string_view key) {
  if (!absl::StartsWith(key, kPeftPrefix)) {
    return KeyError(file, key,
                    absl::StrCat("not a PEFT adapter tensor (PEFT saves every "
                                 "tensor under ",
                                 Quote(kPeftPrefix), ")"));
  }
  const std::vector<std::string> parts =
      absl::StrSplit(key.substr(kPeftPrefix.size()), '.');
  const size_t n = parts.size();
  for (const std::string& p : parts) {
    if (p.empty()) return KeyError(file, key, "has an empty name component");
  }
  auto join = [&](size_t end) {
    return absl::StrJoin(parts.begin(), parts.begin() + end, ".");
  };
  auto linear_factor = [](const std::string& p) -> std::optional<Factor> {
    if (p == "lora_A") return Factor::kA;
    if (p == "lora_B") return Factor::kB;
    return std::nullopt;
  };
  auto embedding_factor = [](const std::string& p) -> std::optional<Factor> {
    if (p == "lora_embedding_A") return Factor::kA;
    if (p == "lora_embedding_B") return Factor::kB;
    return std::nullopt;
  };

  ParsedKey out;
  // <module>.lora_X.weight or <module>.lora_X.<adapter>.weight
  if (parts[n - 1] == "weight") {
    for (size_t at : {size_t{2}, size_t{3}}) {
      if (n > at && linear_factor(parts[n - at]).has_value()) {
        out.lora = true;
        out.factor = *linear_factor(parts[n - at]);
        out.module = join(n - at);
        return out;
      }
    }
  }
  // <module>.lora_embedding_X or <module>.lora_embedding_X.<adapter>
  for (size_t at : {size_t{1}, size_t{2}}) {
    if (n > at && embedding_factor(parts[n - at]).has_value()) {
      out.lora = true;
      out.embedding = true;
      out.factor = *embedding_factor(parts[n - at]);
      out.module = join(n - at);
      return out;
    }
  }
  // Anything else named like a LoRA parameter is a variant we do not merge.
  for (size_t at = 1; at <= std::min<size_t>(3, n); ++at) {
    const std::string& p = parts[n - at];
    if (p == "lora_B" && parts[n - 1] == "bias") {
      return KeyError(file, key,
                      "a LoRA bias (lora_bias=True) is not supported");
    }
    if (p == "lora_magnitude_vector") {
      return KeyError(file, key,
                      "a DoRA magnitude vector (use_dora=True) is not "
                      "supported");
    }
    if (absl::StartsWith(p, "lora_")) {
      return KeyError(
          file, key,
          "not a recognised LoRA tensor (expected <module>.lora_A.weight, "
          "<module>.lora_B.weight, <module>.lora_embedding_A or "
          "<module>.lora_embedding_B, optionally with an adapter name before "
          "'.weight' / at the end)");
    }
  }
  // A full tensor: <module>.<param>,
  // <module>.modules_to_save.<adapter>.<param>, <module>.base_layer.<param>.
  std::vector<std::string> target;
  for (size_t i = 0; i < n; ++i) {
    if (parts[i] == "modules_to_save") {
      if (i == 0 || i + 2 >= n) {
        return KeyError(file, key,
                        "malformed modules_to_save key (expected "
                        "<module>.modules_to_save.<adapter>.<param>)");
      }
      ++i;  // skip the adapter name
      continue;
    }
    if (parts[i] == "original_module") {
      return KeyError(file, key,
                      "the frozen original of a modules_to_save module is not "
                      "an adapter tensor");
    }
    if (parts[i] == "base_layer" && i + 1 < n) continue;
    target.push_back(parts[i]);
  }
  out.target = absl::StrJoin(target, ".");
  return out;
}

// ---------------------------------------------------------------------------
// Adapter names -> base names

// How adapter-side names map to base tensor names (see the file comment).
struct NameMap {
  enum Mode { kIdentity, kStrip, kPrepend };
  Mode mode = kIdentity;
  std::string prefix;  // with the trailing '.'

  std::string Apply(const std::string& name) const {
    switch (mode) {
      case kIdentity:
        return name;
      case kStrip:
        return absl::StartsWith(name, prefix) ? name.substr(prefix.size())
                                              : name;
      case kPrepend:
        return prefix + name;
    }
    return name;
  }
  std::string Describe() const {
    switch (mode) {
      case kIdentity:
        return "the names as saved";
      case kStrip:
        return absl::StrCat(Quote(prefix), " stripped");
      case kPrepend:
        return absl::StrCat(Quote(prefix), " prepended");
    }
    return "";
  }
};

std::string Shape(const std::vector<int64_t>& shape) {
  return absl::StrCat("[", absl::StrJoin(shape, ", "), "]");
}

// Adapter-side names (in adapter key order, with the key each comes from).
struct Target {
  std::string name;
  std::string key;
  bool lora = false;  // a LoRA module's weight, else a full replacement
};

absl::StatusOr<NameMap> ChooseNameMap(const TensorSource& base,
                                      const std::vector<Target>& targets,
                                      absl::string_view file) {
  auto resolves = [&](const NameMap& map) {
    for (const Target& t : targets) {
      if (base.Find(map.Apply(t.name)) == nullptr) return false;
    }
    return true;
  };
  const NameMap identity;
  const Target* missing = nullptr;
  for (const Target& t : targets) {
    if (base.Find(t.name) == nullptr) {
      missing = &t;
      break;
    }
  }
  if (missing == nullptr) return identity;

  // Candidate prefixes, derived from the first unresolved name.
  std::vector<NameMap> candidates;
  const size_t dot = missing->name.find('.');
  if (dot != std::string::npos) {
    candidates.push_back({NameMap::kStrip, missing->name.substr(0, dot + 1)});
  }
  const std::string suffix = absl::StrCat(".", missing->name);
  for (const TensorInfo& t : base.tensors()) {
    if (t.name.size() > suffix.size() && absl::EndsWith(t.name, suffix)) {
      const std::string head = t.name.substr(0, t.name.size() - suffix.size());
      if (!absl::StrContains(head, '.')) {
        candidates.push_back({NameMap::kPrepend, head + "."});
      }
    }
  }
  std::vector<NameMap> valid;
  for (const NameMap& c : candidates) {
    if (resolves(c)) valid.push_back(c);
  }
  if (valid.size() == 1) return valid[0];
  if (valid.size() > 1) {
    return absl::InvalidArgumentError(absl::StrCat(
        file, ": the adapter's module names do not match ", base.description(),
        " as saved, and both ", valid[0].Describe(), " and ",
        valid[1].Describe(), " would match; refusing to guess"));
  }
  // Report the first tensor that cannot be found, with the names tried.
  std::vector<std::string> tried = {absl::StrCat(Quote(missing->name))};
  std::set<std::string> seen = {missing->name};
  auto add = [&](const std::string& name) {
    if (seen.insert(name).second) tried.push_back(absl::StrCat(Quote(name)));
  };
  if (absl::StartsWith(missing->name, "model.")) {
    add(missing->name.substr(6));
  } else {
    add(absl::StrCat("model.", missing->name));
  }
  for (const NameMap& c : candidates) add(c.Apply(missing->name));
  return absl::NotFoundError(absl::StrCat(
      file, ": tensor ", Quote(missing->key), ": ",
      missing->lora ? "the LoRA module's base tensor "
                    : "not a LoRA factor, so it replaces a base tensor "
                      "(modules_to_save); but ",
      absl::StrJoin(tried, " or "), " is not in ", base.description(),
      " (no consistent base-model prefix mapping resolves every adapter "
      "tensor)"));
}

// ---------------------------------------------------------------------------
// Merging

bool NeedsTranspose(const LoraModule& m, bool fan_in_fan_out) {
  return m.embedding || fan_in_fan_out;
}

absl::StatusOr<at::Tensor> MergeModule(const TensorSource& base,
                                       const Checkpoint& adapter,
                                       const LoraModule& m, DType base_dtype,
                                       bool fan_in_fan_out) {
  ReadOptions compute;
  compute.floating_dtype = base_dtype == DType::kF64 ? at::kDouble : at::kFloat;
  compute.device = at::kCPU;
  TAILOR_ASSIGN_OR_RETURN(at::Tensor w, base.Read(m.base_tensor, compute));
  TAILOR_ASSIGN_OR_RETURN(at::Tensor a, adapter.Read(m.a_key, compute));
  TAILOR_ASSIGN_OR_RETURN(at::Tensor b, adapter.Read(m.b_key, compute));
  const bool transpose = NeedsTranspose(m, fan_in_fan_out);
  return CatchTorch(
      absl::StrCat(adapter.description(), ": merging LoRA ", Quote(m.a_key),
                   " into ", Quote(m.base_tensor)),
      [&]() -> at::Tensor {
        // W + s * B A, or W + s * (B A)^T = W + s * A^T B^T.
        return transpose ? at::addmm(w, a.t(), b.t(), /*beta=*/1,
                                     /*alpha=*/m.scaling)
                         : at::addmm(w, b, a, /*beta=*/1,
                                     /*alpha=*/m.scaling);
      });
}

absl::StatusOr<std::string> TensorBytes(const at::Tensor& stored,
                                        const TensorInfo& info,
                                        absl::string_view label) {
  const uint64_t nbytes =
      static_cast<uint64_t>(stored.numel()) * stored.element_size();
  if (nbytes != info.nbytes) {
    return absl::InternalError(absl::StrCat(label, ": produced ", nbytes,
                                            " bytes, expected ", info.nbytes));
  }
  std::string bytes(nbytes, '\0');
  if (nbytes > 0) std::memcpy(bytes.data(), stored.data_ptr(), nbytes);
  return bytes;
}

}  // namespace

bool IsLoraAdapterDir(const std::string& dir) {
  return IsDirectory(dir) && PathExists(JoinPath(dir, kAdapterConfigName));
}

absl::StatusOr<std::unique_ptr<LoraFineTuned>> LoraFineTuned::Create(
    const TensorSource* base, const std::string& adapter_dir,
    const Checkpoint::Options& options) {
  if (base == nullptr) {
    return absl::InvalidArgumentError("LoraFineTuned: no base checkpoint");
  }
  if (!IsDirectory(adapter_dir)) {
    return absl::NotFoundError(
        absl::StrCat("LoRA adapter directory ", adapter_dir, " not found"));
  }
  const std::string config_path = JoinPath(adapter_dir, kAdapterConfigName);
  const std::string weights_path = JoinPath(adapter_dir, kAdapterWeightsName);

  if (options.resolver != nullptr) {
    TAILOR_RETURN_IF_ERROR(
        options.resolver->CheckLocalPath(config_path).status());
  }
  TAILOR_ASSIGN_OR_RETURN(std::string text,
                          ReadFileToString(config_path, kMaxConfigBytes));
  TAILOR_ASSIGN_OR_RETURN(ParsedConfig parsed, ParseConfig(config_path, text));

  if (!PathExists(weights_path)) {
    for (const char* pickle : {"adapter_model.bin", "adapter_model.pt"}) {
      const std::string path = JoinPath(adapter_dir, pickle);
      if (PathExists(path)) TAILOR_RETURN_IF_ERROR(RefuseIfPickleName(path));
    }
    return absl::NotFoundError(
        absl::StrCat(adapter_dir, ": no ", kAdapterWeightsName,
                     " (a PEFT LoRA adapter directory holds ",
                     kAdapterConfigName, " and ", kAdapterWeightsName, ")"));
  }
  std::unique_ptr<LoraFineTuned> lora(new LoraFineTuned());
  lora->base_ = base;
  lora->config_ = std::move(parsed.config);
  lora->description_ = absl::StrCat(adapter_dir, " over ", base->description());
  TAILOR_ASSIGN_OR_RETURN(lora->adapter_,
                          Checkpoint::Open(weights_path, options));
  const Checkpoint& adapter = *lora->adapter_;
  const std::string& file = adapter.description();
  const LoraConfig& config = lora->config_;
  if (adapter.tensors().empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat(file, ": the adapter holds no tensors"));
  }

  // Classify every key.
  struct Pair {
    const TensorInfo* a = nullptr;
    const TensorInfo* b = nullptr;
    bool embedding = false;
  };
  std::map<std::string, Pair> pairs;              // PEFT module -> factors
  std::map<std::string, const TensorInfo*> full;  // target -> adapter tensor
  for (const TensorInfo& t : adapter.tensors()) {
    TAILOR_ASSIGN_OR_RETURN(ParsedKey k, ParseKey(file, t.name));
    if (!k.lora) {
      auto [it, inserted] = full.emplace(k.target, &t);
      if (!inserted) {
        return KeyError(
            file, t.name,
            absl::StrCat("replaces ", Quote(k.target), ", which tensor ",
                         Quote(it->second->name), " already replaces"));
      }
      continue;
    }
    Pair& pair = pairs[k.module];
    const TensorInfo*& slot = k.factor == Factor::kA ? pair.a : pair.b;
    const TensorInfo* other = k.factor == Factor::kA ? pair.b : pair.a;
    if (slot != nullptr) {
      return KeyError(
          file, t.name,
          absl::StrCat("module ", Quote(k.module),
                       " already has this factor in tensor ", Quote(slot->name),
                       " (one adapter per file is supported)"));
    }
    if (other != nullptr && pair.embedding != k.embedding) {
      return KeyError(file, t.name,
                      absl::StrCat("mixes Linear and Embedding LoRA factors "
                                   "with tensor ",
                                   Quote(other->name)));
    }
    slot = &t;
    pair.embedding = k.embedding;
  }
  for (const auto& [module, pair] : pairs) {
    if (pair.a == nullptr || pair.b == nullptr) {
      const TensorInfo* have = pair.a != nullptr ? pair.a : pair.b;
      const char* need =
          pair.embedding
              ? (pair.a != nullptr ? "lora_embedding_B" : "lora_embedding_A")
              : (pair.a != nullptr ? "lora_B" : "lora_A");
      return KeyError(
          file, have->name,
          absl::StrCat("module ", Quote(module), " has no matching ", need,
                       " tensor (LoRA factors come in A/B "
                       "pairs)"));
    }
  }

  // Resolve base names for everything at once (one mapping for all).
  std::vector<Target> targets;
  for (const auto& [module, pair] : pairs) {
    targets.push_back({absl::StrCat(module, ".weight"), pair.a->name, true});
  }
  for (const auto& [target, info] : full) {
    targets.push_back({target, info->name, false});
  }
  std::sort(targets.begin(), targets.end(),
            [](const Target& x, const Target& y) { return x.key < y.key; });
  TAILOR_ASSIGN_OR_RETURN(NameMap map, ChooseNameMap(*base, targets, file));

  // LoRA modules.
  std::map<std::string, std::string> merged_from;  // base tensor -> module
  for (const auto& [module, pair] : pairs) {
    LoraModule m;
    m.base_tensor = map.Apply(absl::StrCat(module, ".weight"));
    m.a_key = pair.a->name;
    m.b_key = pair.b->name;
    m.embedding = pair.embedding;
    if (auto [it, inserted] = merged_from.emplace(m.base_tensor, module);
        !inserted) {
      return KeyError(
          file, m.a_key,
          absl::StrCat("module ", Quote(module), " and module ",
                       Quote(it->second), " both map to base tensor ",
                       Quote(m.base_tensor)));
    }
    const TensorInfo* w = base->Find(m.base_tensor);  // resolved above
    if (!IsFloatingDType(w->dtype) || w->shape.size() != 2) {
      return KeyError(
          file, m.a_key,
          absl::StrCat("base tensor ", Quote(m.base_tensor), " is ",
                       DTypeName(w->dtype), " ", Shape(w->shape),
                       "; LoRA merges only into 2-D floating-point (F16, "
                       "BF16, F32, F64) weights"));
    }
    for (const TensorInfo* f : {pair.a, pair.b}) {
      if (!IsFloatingDType(f->dtype) || f->shape.size() != 2) {
        return KeyError(
            file, f->name,
            absl::StrCat("is ", DTypeName(f->dtype), " ", Shape(f->shape),
                         "; LoRA factors must be 2-D "
                         "floating-point matrices"));
      }
    }
    const Pattern* rank_match = MatchPattern(parsed.rank_patterns, module);
    const Pattern* alpha_match = MatchPattern(parsed.alpha_patterns, module);
    m.rank =
        rank_match != nullptr ? static_cast<int>(rank_match->value) : config.r;
    const double alpha =
        alpha_match != nullptr ? alpha_match->value : config.lora_alpha;
    const std::string rank_source =
        rank_match != nullptr
            ? absl::StrCat("rank_pattern[", Quote(rank_match->key),
                           "] = ", m.rank)
            : absl::StrCat("r = ", m.rank);
    if (pair.a->shape[0] != m.rank || pair.b->shape[1] != m.rank) {
      const TensorInfo* bad = pair.a->shape[0] != m.rank ? pair.a : pair.b;
      return KeyError(
          file, bad->name,
          absl::StrCat("rank mismatch: lora_A is ", Shape(pair.a->shape),
                       " and lora_B is ", Shape(pair.b->shape), " but ",
                       kAdapterConfigName, " gives ", rank_source,
                       " for module ", Quote(module),
                       " (lora_A must be [r, in], lora_B [out, r])"));
    }
    // The base weight as PEFT sees it: Linear (out, in); Conv1D with
    // fan_in_fan_out (in, out); Embedding (num_embeddings, dim) with
    // A: (r, num_embeddings), B: (dim, r).
    const bool transpose = NeedsTranspose(m, config.fan_in_fan_out);
    const int64_t out = transpose ? w->shape[1] : w->shape[0];
    const int64_t in = transpose ? w->shape[0] : w->shape[1];
    if (pair.a->shape[1] != in || pair.b->shape[0] != out) {
      const TensorInfo* bad = pair.a->shape[1] != in ? pair.a : pair.b;
      return KeyError(
          file, bad->name,
          absl::StrCat(
              "shape mismatch: lora_A ", Shape(pair.a->shape), " and lora_B ",
              Shape(pair.b->shape), " give an update B @ A of shape [",
              pair.b->shape[0], ", ", pair.a->shape[1], "]",
              transpose ? " (applied transposed)" : "", " but base tensor ",
              Quote(m.base_tensor), " is ", Shape(w->shape),
              m.embedding ? " (embedding LoRA: A is [r, num_embeddings], B "
                            "is [dim, r])"
              : config.fan_in_fan_out
                  ? " (fan_in_fan_out: the base weight is [in, out])"
                  : " (the base weight is [out, in])"));
    }
    m.scaling = config.use_rslora
                    ? alpha / std::sqrt(static_cast<double>(m.rank))
                    : alpha / m.rank;
    lora->modules_.push_back(std::move(m));
  }
  std::sort(lora->modules_.begin(), lora->modules_.end(),
            [](const LoraModule& x, const LoraModule& y) {
              return x.base_tensor < y.base_tensor;
            });

  // Full-tensor replacements.
  for (const auto& [target, info] : full) {
    const std::string name = map.Apply(target);
    const TensorInfo* w = base->Find(name);  // resolved above
    if (merged_from.count(name) > 0) {
      return KeyError(
          file, info->name,
          absl::StrCat("replaces base tensor ", Quote(name),
                       ", which LoRA module ", Quote(merged_from[name]),
                       " also updates; refusing to guess which "
                       "applies"));
    }
    if (info->shape != w->shape) {
      return KeyError(file, info->name,
                      absl::StrCat("shape ", Shape(info->shape),
                                   " does not match base tensor ", Quote(name),
                                   " ", Shape(w->shape),
                                   " (a modules_to_save tensor replaces the "
                                   "base tensor and must have its shape)"));
    }
    const bool compatible = IsFloatingDType(w->dtype)
                                ? IsFloatingDType(info->dtype)
                                : info->dtype == w->dtype;
    if (!compatible) {
      return KeyError(
          file, info->name,
          absl::StrCat("dtype ", DTypeName(info->dtype),
                       " cannot stand in for base tensor ", Quote(name), " (",
                       DTypeName(w->dtype),
                       "); floating tensors may differ only in float "
                       "width, others must match exactly"));
    }
    lora->replaced_.emplace(name, info->name);
  }
  return lora;
}

const std::vector<TensorInfo>& LoraFineTuned::tensors() const {
  return base_->tensors();
}

absl::StatusOr<at::Tensor> LoraFineTuned::Read(
    absl::string_view name, const ReadOptions& options) const {
  const TensorInfo* info = base_->Find(name);
  if (info == nullptr) return base_->Read(name, options);  // its NOT_FOUND
  const std::optional<at::ScalarType> stored = ToScalarType(info->dtype);

  if (auto it = replaced_.find(info->name); it != replaced_.end()) {
    if (options.floating_dtype.has_value() || !stored.has_value()) {
      return adapter_->Read(it->second, options);
    }
    // Keep the stored type: the view's stored type is the base's.
    ReadOptions keep;
    keep.floating_dtype = *stored;
    keep.device = options.device;
    return adapter_->Read(it->second, keep);
  }

  auto m = std::lower_bound(modules_.begin(), modules_.end(), name,
                            [](const LoraModule& x, absl::string_view n) {
                              return x.base_tensor < n;
                            });
  if (m == modules_.end() || m->base_tensor != name) {
    return base_->Read(name, options);
  }
  TAILOR_ASSIGN_OR_RETURN(
      at::Tensor merged,
      MergeModule(*base_, *adapter_, *m, info->dtype, config_.fan_in_fan_out));
  ReadOptions out = options;
  if (!out.floating_dtype.has_value()) out.floating_dtype = stored;
  return ApplyReadOptions(
      merged, out, absl::StrCat(description_, ": tensor ", Quote(info->name)));
}

absl::StatusOr<std::string> LoraFineTuned::ReadRaw(
    absl::string_view name) const {
  const TensorInfo* info = base_->Find(name);
  if (info == nullptr) return base_->ReadRaw(name);  // its NOT_FOUND
  const std::string label =
      absl::StrCat(description_, ": tensor ", Quote(info->name));

  if (auto it = replaced_.find(info->name); it != replaced_.end()) {
    const TensorInfo* from = adapter_->Find(it->second);
    if (from->dtype == info->dtype) return adapter_->ReadRaw(it->second);
    ReadOptions keep;
    keep.floating_dtype = std::nullopt;
    TAILOR_ASSIGN_OR_RETURN(at::Tensor t, adapter_->Read(it->second, keep));
    TAILOR_ASSIGN_OR_RETURN(at::Tensor stored,
                            ToStoredTensor(t, info->dtype, label));
    return TensorBytes(stored, *info, label);
  }

  auto m = std::lower_bound(modules_.begin(), modules_.end(), name,
                            [](const LoraModule& x, absl::string_view n) {
                              return x.base_tensor < n;
                            });
  if (m == modules_.end() || m->base_tensor != name) {
    return base_->ReadRaw(name);
  }
  TAILOR_ASSIGN_OR_RETURN(
      at::Tensor merged,
      MergeModule(*base_, *adapter_, *m, info->dtype, config_.fan_in_fan_out));
  TAILOR_ASSIGN_OR_RETURN(at::Tensor stored,
                          ToStoredTensor(merged, info->dtype, label));
  return TensorBytes(stored, *info, label);
}

}  // namespace tailor
