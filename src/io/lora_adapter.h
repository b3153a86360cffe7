#ifndef TAILOR_IO_LORA_ADAPTER_H_
#define TAILOR_IO_LORA_ADAPTER_H_

#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "io/checkpoint.h"
#include "io/peft_config.h"  // LoraConfig
#include "io/tensor_source.h"

namespace tailor {

inline constexpr char kAdapterConfigName[] = "adapter_config.json";
inline constexpr char kAdapterWeightsName[] = "adapter_model.safetensors";

// True if `dir` is a directory holding adapter_config.json.
bool IsLoraAdapterDir(const std::string& dir);
// The same for any path `resolver` returned (a remote prefix too).
bool IsLoraAdapterDir(const std::string& dir, const UriResolver& resolver);

// One module's low-rank update, resolved against the base checkpoint.
struct LoraModule {
  std::string base_tensor;  // e.g. "model.layers.0.self_attn.q_proj.weight"
  std::string a_key;        // adapter tensor names
  std::string b_key;
  bool embedding = false;  // lora_embedding_A/B (delta = (B A)^T)
  int rank = 0;
  double scaling = 0;  // alpha / r (or alpha / sqrt(r) with rsLoRA)
};

// A fine-tuned checkpoint given as base + PEFT LoRA adapter directory
// (adapter_config.json + adapter_model.safetensors), merged on the fly:
//   W = W_base + scaling * B @ A         (transposed when fan_in_fan_out)
// for every targeted module, and `modules_to_save` tensors replacing the base
// tensor outright. It exposes exactly the base's tensors (same names, dtypes,
// shapes), so it can stand wherever a full fine-tuned checkpoint can.
//
// Create() validates everything up front: peft_type LORA, r > 0, every
// adapter tensor maps to a base tensor of compatible shape, A/B come in
// pairs with rank r (or the rank_pattern rank). Unsupported variants (DoRA
// `use_dora`, LoRA bias `lora_bias`/`lora_B.bias`, other peft_types, unknown
// adapter keys) are refused with INVALID_ARGUMENT naming the file and field.
//
// Thread-safe after Create(); `base` must outlive this object.
class LoraFineTuned : public TensorSource {
 public:
  static absl::StatusOr<std::unique_ptr<LoraFineTuned>> Create(
      const TensorSource* base, const std::string& adapter_dir,
      const Checkpoint::Options& options);

  const std::vector<TensorInfo>& tensors() const override;
  // Merged tensors are computed in float32 (or float64 if the base is F64)
  // and then converted per `options`; untouched tensors are the base's.
  absl::StatusOr<at::Tensor> Read(absl::string_view name,
                                  const ReadOptions& options) const override;
  using TensorSource::Read;
  // Merged tensors are rounded back to the base dtype.
  absl::StatusOr<std::string> ReadRaw(absl::string_view name) const override;
  const std::string& description() const override { return description_; }

  const LoraConfig& config() const { return config_; }
  const std::vector<LoraModule>& modules() const { return modules_; }
  // base tensor -> adapter tensor replacing it (modules_to_save).
  const std::map<std::string, std::string>& replaced() const {
    return replaced_;
  }
  const Checkpoint& adapter() const { return *adapter_; }

 private:
  LoraFineTuned() = default;

  // The module merged into base tensor `name`, or null (Read and ReadRaw).
  const LoraModule* FindModule(absl::string_view name) const;

  const TensorSource* base_ = nullptr;
  std::unique_ptr<Checkpoint> adapter_;
  std::string description_;
  LoraConfig config_;
  std::vector<LoraModule> modules_;              // sorted by base_tensor
  std::map<std::string, std::string> replaced_;  // base name -> adapter key
};

}  // namespace tailor

#endif  // TAILOR_IO_LORA_ADAPTER_H_
