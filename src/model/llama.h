#ifndef TAILOR_MODEL_LLAMA_H_
#define TAILOR_MODEL_LLAMA_H_

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "io/dtype.h"
#include "io/tensor_source.h"
#include "model/llama_config.h"

namespace tailor {

// Observes a forward pass. Called synchronously from LlamaModel::Forward on
// the calling thread.
class ForwardHooks {
 public:
  virtual ~ForwardHooks() = default;

  // Called before every linear layer is applied, with the layer's weight name
  // (Hugging Face naming, e.g. "model.layers.3.mlp.down_proj.weight") and its
  // input [B, T, in] in the model's dtype. Layers sharing an input (q/k/v,
  // gate/up) are each reported, with the same tensor. The tensor may be part
  // of an autograd graph: observers must not modify it (detach() before
  // in-place work). lm_head is reported only when its weight is not tied to
  // the embeddings.
  virtual void OnLinearInput(const std::string& weight_name,
                             const at::Tensor& input) = 0;
};

struct LlamaSaveOptions {
  // Stored dtype of every tensor (floating: F16, BF16, F32 or F64).
  DType dtype = DType::kBF16;
  // Replace an existing output directory (atomically, CheckpointWriter).
  bool overwrite = false;
  // Hugging Face `max_shard_size`, in bytes.
  uint64_t max_shard_bytes = 5'000'000'000;
};

// A LLaMA-family decoder with the semantics of Hugging Face's
// LlamaForCausalLM (eager attention, no padding, no KV cache), written in
// plain differentiable ATen ops: parameters may require grad and Forward()
// builds an autograd graph (no in-place ops on activations).
//
// Parameters are held under their Hugging Face names:
//   model.embed_tokens.weight                                    [V, H]
//   model.layers.N.self_attn.{q,k,v,o}_proj.weight
//   model.layers.N.mlp.{gate,up,down}_proj.weight
//   model.layers.N.{input,post_attention}_layernorm.weight       [H]
//   model.norm.weight                                            [H]
//   lm_head.weight                                               [V, H]
//     (absent when tie_word_embeddings: the embedding is used)
// all of one floating dtype on one device.
//
// Precision follows Hugging Face: activations in the parameters' dtype;
// RMSNorm statistics, RoPE tables and the attention softmax computed in
// float32 -- or float64 when the parameters are float64 (Hugging Face would
// round those to float32; we keep the wider type, so a float64 model is a
// float64 reference); logits returned in float32 (float64 for a float64
// model).
//
// Thread-compatible: concurrent Forward() calls are safe; mutating
// parameters concurrently with them is not.
class LlamaModel {
 public:
  // Fresh parameters as Hugging Face initialises them: linears and the
  // embedding ~ normal(0, config.initializer_range), norms = 1. Deterministic
  // for a seed (drawn in float32 on the CPU in name order, then converted),
  // whatever the dtype and device. `dtype`: kFloat, kDouble, kBFloat16 or
  // kHalf.
  static absl::StatusOr<LlamaModel> Init(const LlamaConfig& config,
                                         uint64_t seed, at::ScalarType dtype,
                                         at::Device device);

  // Reads every parameter from `checkpoint` (converted to `dtype`, on
  // `device`). INVALID_ARGUMENT naming the tensor when one is missing, has
  // the wrong shape or a non-floating dtype, or when the checkpoint holds a
  // tensor the model does not use (rotary `inv_freq` buffers are ignored; a
  // tied model accepts an lm_head.weight equal to the embedding).
  static absl::StatusOr<LlamaModel> Load(const TensorSource& checkpoint,
                                         const LlamaConfig& config,
                                         at::Device device = at::kCPU,
                                         at::ScalarType dtype = at::kFloat);

  // Writes a Hugging Face checkpoint directory: safetensors (through
  // CheckpointWriter, so atomic) plus config.json (with torch_dtype).
  absl::Status Save(const std::string& out_dir,
                    const LlamaSaveOptions& options = {}) const;

  // Logits [B, T, V] for tokens [B, T] (integer, values in [0, V)), T >= 1.
  // Positions are 0..T-1 in every row; attention is causal. Throws
  // c10::Error on bad input (see CheckTokens) -- callers at a status
  // boundary wrap it in CatchTorch.
  at::Tensor Forward(const at::Tensor& tokens,
                     ForwardHooks* hooks = nullptr) const;

  // Mean next-token cross-entropy: logits[:, :-1] against tokens[:, 1:].
  // REQUIRES: T >= 2. Differentiable; a scalar of the logits' dtype.
  at::Tensor Loss(const at::Tensor& tokens,
                  ForwardHooks* hooks = nullptr) const;

  // OK when Forward() accepts `tokens`: a defined 2-D integer tensor with
  // B, T >= 1 and every value in [0, vocab_size). INVALID_ARGUMENT otherwise.
  absl::Status CheckTokens(const at::Tensor& tokens) const;

  // The expected parameter names and shapes for `config`, sorted by name.
  static std::vector<std::pair<std::string, std::vector<int64_t>>>
  ParameterShapes(const LlamaConfig& config);

  const LlamaConfig& config() const { return config_; }
  at::ScalarType dtype() const { return dtype_; }
  at::Device device() const { return device_; }

  // The parameters by name. The tensors are handles: in-place updates
  // (optimizer steps, requires_grad_) reach the model.
  const std::map<std::string, at::Tensor>& parameters() const {
    return params_;
  }
  // The same handles in name order, for an optimizer.
  std::vector<std::pair<std::string, at::Tensor>> NamedParameters() const;

 private:
  LlamaModel(LlamaConfig config, at::ScalarType dtype, at::Device device)
      : config_(std::move(config)), dtype_(dtype), device_(device) {}

  const at::Tensor& Param(const std::string& name) const;
  at::Tensor Linear(const std::string& weight_name, const at::Tensor& input,
                    ForwardHooks* hooks) const;
  at::Tensor RmsNorm(const at::Tensor& x, const std::string& weight_name) const;
  at::Tensor Attention(const std::string& prefix, const at::Tensor& x,
                       const at::Tensor& cos, const at::Tensor& sin,
                       const at::Tensor& causal_mask,
                       ForwardHooks* hooks) const;
  at::Tensor Mlp(const std::string& prefix, const at::Tensor& x,
                 ForwardHooks* hooks) const;

  LlamaConfig config_;
  at::ScalarType dtype_;
  at::Device device_;
  std::map<std::string, at::Tensor> params_;
};

}  // namespace tailor

#endif  // TAILOR_MODEL_LLAMA_H_
