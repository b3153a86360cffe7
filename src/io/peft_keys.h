#ifndef TAILOR_IO_PEFT_KEYS_H_
#define TAILOR_IO_PEFT_KEYS_H_

// The tensor names of a PEFT LoRA adapter_model.safetensors: what each key
// is (a LoRA factor of a module, or a full tensor replacing a base tensor),
// and how the adapter's module names map to the base checkpoint's tensor
// names. PEFT's own code is the reference (peft/utils/save_and_load.py,
// peft/tuners/lora/model.py, peft/utils/other.py).
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

#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "io/tensor_source.h"

namespace tailor {

// Every key of a PEFT adapter file starts with this.
inline constexpr absl::string_view kPeftPrefix = "base_model.model.";

enum class PeftFactor { kA, kB };

// One adapter key, classified.
struct PeftKey {
  bool lora = false;
  // LoRA factor: the PEFT module path, which factor, and whether it is an
  // embedding LoRA (lora_embedding_A/B).
  std::string module;
  PeftFactor factor = PeftFactor::kA;
  bool embedding = false;
  // Full tensor: the tensor it replaces, before base-name mapping.
  std::string target;
};

// INVALID_ARGUMENT "<file>: tensor '<key>': <message>".
absl::Status AdapterTensorError(absl::string_view file, absl::string_view key,
                                absl::string_view message);

// Classifies `key` of adapter file `file`. INVALID_ARGUMENT (through
// AdapterTensorError) for keys outside kPeftPrefix, empty components, LoRA
// variants that are not merged (LoRA bias, DoRA magnitudes, unknown lora_*
// parameters), malformed modules_to_save keys and original_module copies.
absl::StatusOr<PeftKey> ParsePeftKey(absl::string_view file,
                                     absl::string_view key);

// How adapter-side names map to base tensor names (see the file comment).
struct PeftNameMap {
  enum Mode { kIdentity, kStrip, kPrepend };
  Mode mode = kIdentity;
  std::string prefix;  // with the trailing '.'

  std::string Apply(const std::string& name) const;
  // For errors: "the names as saved", "'model.' stripped", ...
  std::string Describe() const;
};

// An adapter-side tensor name to resolve, with the key it comes from.
struct PeftTarget {
  std::string name;
  std::string key;
  bool lora = false;  // a LoRA module's weight, else a full replacement
};

// The one mapping under which every target (in adapter key order) is a
// tensor of `base`: the names as saved when they all resolve, else the one
// prefix strip or prepend that resolves them all. INVALID_ARGUMENT when two
// mappings would; NOT_FOUND naming the first unresolved key and the names
// tried when none does.
absl::StatusOr<PeftNameMap> ChoosePeftNameMap(
    const TensorSource& base, const std::vector<PeftTarget>& targets,
    absl::string_view file);

}  // namespace tailor

#endif  // TAILOR_IO_PEFT_KEYS_H_
