#ifndef TAILOR_MODEL_LLAMA_CONFIG_H_
#define TAILOR_MODEL_LLAMA_CONFIG_H_

#include <cstdint>
#include <optional>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "nlohmann/json.hpp"

namespace tailor {

class UriResolver;

// The shape and constants of a LLaMA-family decoder (Hugging Face
// `LlamaConfig`, model_type "llama"), read from a config.json.
//
// Only the options whose maths LlamaModel implements are accepted: options
// that change the computation when set to a non-default value (rope_scaling,
// attention_bias, mlp_bias, hidden_act other than silu, pretraining_tp > 1,
// an explicit head_dim other than hidden_size / num_attention_heads, a
// rope_parameters rope_type other than "default") are refused with
// INVALID_ARGUMENT naming the field. Unknown keys (tokenizer ids, torch_dtype,
// use_cache, ...) are ignored.
struct LlamaConfig {
  int64_t hidden_size = 0;
  int64_t intermediate_size = 0;
  int64_t num_hidden_layers = 0;
  int64_t num_attention_heads = 0;
  // Grouped-query attention: heads share key/value heads in groups of
  // num_attention_heads / num_key_value_heads. Absent in the JSON: = heads.
  int64_t num_key_value_heads = 0;
  double rms_norm_eps = 1e-6;
  double rope_theta = 10000.0;
  int64_t vocab_size = 0;
  bool tie_word_embeddings = false;
  std::optional<int64_t> max_position_embeddings;
  // Standard deviation of the normal init of linears and embeddings.
  double initializer_range = 0.02;

  // hidden_size / num_attention_heads.
  int64_t head_dim() const {
    return num_attention_heads > 0 ? hidden_size / num_attention_heads : 0;
  }

  // Parses a config.json object. Required: hidden_size, intermediate_size,
  // num_hidden_layers, num_attention_heads, vocab_size (positive integers);
  // model_type "llama", or model_type absent and architectures containing
  // "LlamaForCausalLM". Errors are INVALID_ARGUMENT "<label>: ..." naming the
  // field and the rule.
  static absl::StatusOr<LlamaConfig> FromJson(const nlohmann::json& json,
                                              absl::string_view label);
  // Reads `path` (a config.json, or a directory holding one) and FromJson().
  // With `resolver`, the file must canonicalise inside one of its allowed
  // roots and is opened beneath that root (UriResolver::ReadFile; issue #14
  // point 7): a config.json symlinked outside the roots, or swapped for such
  // a symlink after the check, is PERMISSION_DENIED naming it; symlinks
  // that stay inside a root are followed. Not owned.
  static absl::StatusOr<LlamaConfig> Load(
      const std::string& path, const UriResolver* resolver = nullptr);

  // Checks the invariants FromJson() enforces on a hand-built config:
  // positive sizes (each at most 2^24; layers at most 4096), hidden divisible
  // by heads, heads divisible by kv heads, finite positive eps and theta.
  absl::Status Validate() const;

  // A Hugging Face-loadable config.json (model_type llama, architectures
  // LlamaForCausalLM, the math-changing options at their defaults) that
  // FromJson() reads back to an equal config.
  nlohmann::json ToJson() const;

  bool operator==(const LlamaConfig& other) const;
  bool operator!=(const LlamaConfig& other) const { return !(*this == other); }
};

}  // namespace tailor

#endif  // TAILOR_MODEL_LLAMA_CONFIG_H_
