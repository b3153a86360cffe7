#include "model/llama.h"

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cmath>
#include <limits>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "io/checkpoint_writer.h"
#include "util/file_util.h"
#include "util/status_macros.h"
#include "util/torch_status.h"

namespace tailor {
namespace {

constexpr char kEmbed[] = "model.embed_tokens.weight";
constexpr char kFinalNorm[] = "model.norm.weight";
constexpr char kLmHead[] = "lm_head.weight";
// Non-persistent buffers older transformers versions saved.
constexpr char kInvFreqSuffix[] = ".rotary_emb.inv_freq";

std::string LayerPrefix(int64_t layer) {
  return absl::StrCat("model.layers.", layer, ".");
}

bool IsNormWeight(absl::string_view name) {
  return absl::EndsWith(name, "layernorm.weight") || name == kFinalNorm;
}

// The type the numerically sensitive parts (RMSNorm statistics, RoPE tables,
// softmax, logits) are computed in: float32, or float64 for a float64 model.
at::ScalarType ComputeType(at::ScalarType dtype) {
  return at::promote_types(dtype, at::kFloat);
}

absl::Status CheckModelDtype(at::ScalarType dtype) {
  if (dtype == at::kFloat || dtype == at::kDouble || dtype == at::kBFloat16 ||
      dtype == at::kHalf) {
    return absl::OkStatus();
  }
  return absl::InvalidArgumentError(
      absl::StrCat("LLaMA model: parameter dtype ", c10::toString(dtype),
                   " is not supported (float32, float64, bfloat16, float16)"));
}

const char* TorchDtypeName(DType dtype) {
  switch (dtype) {
    case DType::kF16:
      return "float16";
    case DType::kBF16:
      return "bfloat16";
    case DType::kF64:
      return "float64";
    default:
      return "float32";
  }
}

// [x1, x2] -> [-x2, x1] along the last dimension (Hugging Face rotate_half).
at::Tensor RotateHalf(const at::Tensor& x) {
  const int64_t half = x.size(-1) / 2;
  return at::cat({at::neg(x.narrow(-1, half, half)), x.narrow(-1, 0, half)},
                 -1);
}

// [B, kv, T, d] -> [B, kv * rep, T, d], each kv head repeated `rep` times
// consecutively (Hugging Face repeat_kv).
at::Tensor RepeatKv(const at::Tensor& x, int64_t rep) {
  if (rep == 1) return x;
  const int64_t b = x.size(0), kv = x.size(1), t = x.size(2), d = x.size(3);
  return x.unsqueeze(2).expand({b, kv, rep, t, d}).reshape({b, kv * rep, t, d});
}

}  // namespace

std::vector<std::pair<std::string, std::vector<int64_t>>>
LlamaModel::ParameterShapes(const LlamaConfig& c) {
  const int64_t h = c.hidden_size;
  const int64_t q = c.num_attention_heads * c.head_dim();
  const int64_t kv = c.num_key_value_heads * c.head_dim();
  const int64_t inter = c.intermediate_size;
  std::map<std::string, std::vector<int64_t>> shapes;
  shapes[kEmbed] = {c.vocab_size, h};
  shapes[kFinalNorm] = {h};
  if (!c.tie_word_embeddings) shapes[kLmHead] = {c.vocab_size, h};
  for (int64_t l = 0; l < c.num_hidden_layers; ++l) {
    const std::string p = LayerPrefix(l);
    shapes[p + "self_attn.q_proj.weight"] = {q, h};
    shapes[p + "self_attn.k_proj.weight"] = {kv, h};
    shapes[p + "self_attn.v_proj.weight"] = {kv, h};
    shapes[p + "self_attn.o_proj.weight"] = {h, q};
    shapes[p + "mlp.gate_proj.weight"] = {inter, h};
    shapes[p + "mlp.up_proj.weight"] = {inter, h};
    shapes[p + "mlp.down_proj.weight"] = {h, inter};
    shapes[p + "input_layernorm.weight"] = {h};
    shapes[p + "post_attention_layernorm.weight"] = {h};
  }
  return {shapes.begin(), shapes.end()};
}

absl::StatusOr<LlamaModel> LlamaModel::Init(const LlamaConfig& config,
                                            uint64_t seed, at::ScalarType dtype,
                                            at::Device device) {
  TAILOR_RETURN_IF_ERROR(config.Validate());
  TAILOR_RETURN_IF_ERROR(CheckModelDtype(dtype));
  LlamaModel model(config, dtype, device);
  TAILOR_RETURN_IF_ERROR(CatchTorch("LLaMA model init", [&] {
    at::Generator gen = at::detail::createCPUGenerator(seed);
    for (const auto& [name, shape] : ParameterShapes(config)) {
      at::Tensor t;
      if (IsNormWeight(name)) {
        t = at::ones(shape, at::kFloat);
      } else {
        t = at::empty(shape, at::kFloat);
        t.normal_(0.0, config.initializer_range, gen);
      }
      model.params_[name] = t.to(device, dtype);
    }
  }));
  return model;
}

absl::StatusOr<LlamaModel> LlamaModel::Load(const TensorSource& checkpoint,
                                            const LlamaConfig& config,
                                            at::Device device,
                                            at::ScalarType dtype) {
  TAILOR_RETURN_IF_ERROR(config.Validate());
  TAILOR_RETURN_IF_ERROR(CheckModelDtype(dtype));
  const std::string& source = checkpoint.description();
  auto error = [&](absl::string_view name, absl::string_view message) {
    return absl::InvalidArgumentError(absl::StrCat(
        source, ": tensor '", name, "' ", message, " (LLaMA config: hidden ",
        config.hidden_size, ", layers ", config.num_hidden_layers, ", vocab ",
        config.vocab_size, ")"));
  };
  auto check_info = [&](const std::string& name,
                        const std::vector<int64_t>& shape) -> absl::Status {
    const TensorInfo* info = checkpoint.Find(name);
    if (info == nullptr) return error(name, "is missing");
    if (!IsFloatingDType(info->dtype)) {
      return error(name, absl::StrCat("is ", DTypeName(info->dtype),
                                      "; model parameters must be floating "
                                      "(F16, BF16, F32, F64)"));
    }
    if (info->shape != shape) {
      return error(
          name,
          absl::StrCat("has shape ", c10::str(at::IntArrayRef(info->shape)),
                       "; expected ", c10::str(at::IntArrayRef(shape))));
    }
    return absl::OkStatus();
  };

  const auto shapes = ParameterShapes(config);
  std::map<std::string, std::vector<int64_t>> expected(shapes.begin(),
                                                       shapes.end());
  // Check every header first, so a bad checkpoint fails before any read.
  for (const auto& [name, shape] : shapes) {
    TAILOR_RETURN_IF_ERROR(check_info(name, shape));
  }
  bool tied_head_present = false;
  std::vector<std::string> extras;
  for (const TensorInfo& info : checkpoint.tensors()) {
    if (expected.count(info.name) > 0 ||
        absl::EndsWith(info.name, kInvFreqSuffix)) {
      continue;
    }
    if (config.tie_word_embeddings && info.name == kLmHead) {
      TAILOR_RETURN_IF_ERROR(check_info(kLmHead, expected.at(kEmbed)));
      tied_head_present = true;
      continue;
    }
    extras.push_back(info.name);
  }
  if (!extras.empty()) {
    const size_t shown = std::min<size_t>(extras.size(), 5);
    return absl::InvalidArgumentError(absl::StrCat(
        source, ": ", extras.size(),
        " tensor(s) the LLaMA model does not use (wrong architecture or "
        "config?): ",
        absl::StrJoin(extras.begin(), extras.begin() + shown, ", "),
        extras.size() > shown ? ", ..." : ""));
  }

  LlamaModel model(config, dtype, device);
  ReadOptions options;
  options.floating_dtype = dtype;
  options.device = device;
  for (const auto& [name, shape] : shapes) {
    TAILOR_ASSIGN_OR_RETURN(model.params_[name],
                            checkpoint.Read(name, options));
  }
  if (tied_head_present) {
    TAILOR_ASSIGN_OR_RETURN(at::Tensor head, checkpoint.Read(kLmHead, options));
    TAILOR_ASSIGN_OR_RETURN(bool same, CatchTorch(source, [&] {
                              return at::equal(head, model.params_.at(kEmbed));
                            }));
    if (!same) {
      return error(kLmHead,
                   "differs from model.embed_tokens.weight, but "
                   "tie_word_embeddings is true");
    }
  }
  return model;
}

absl::Status LlamaModel::Save(const std::string& out_dir,
                              const LlamaSaveOptions& options) const {
  if (!IsFloatingDType(options.dtype)) {
    return absl::InvalidArgumentError(
        absl::StrCat("LLaMA save: dtype ", DTypeName(options.dtype),
                     " is not floating (F16, BF16, F32, F64)"));
  }
  std::vector<TensorInfo> layout;
  for (const auto& [name, t] : params_) {
    TensorInfo info;
    info.name = name;
    info.dtype = options.dtype;
    info.shape = t.sizes().vec();
    info.numel = t.numel();
    info.nbytes = static_cast<uint64_t>(info.numel) * DTypeSize(options.dtype);
    layout.push_back(std::move(info));
  }
  // config.json goes in through copy_files_from, so it is published
  // atomically with the weights.
  if (!IsDirectory(Dirname(out_dir))) {
    return absl::NotFoundError(absl::StrCat("parent directory ",
                                            Dirname(out_dir), " of output ",
                                            out_dir, " does not exist"));
  }
  static std::atomic<uint64_t> counter{0};
  const std::string config_dir =
      absl::StrCat(Dirname(out_dir), "/.", Basename(out_dir), ".config-",
                   ::getpid(), "-", counter.fetch_add(1));
  if (::mkdir(config_dir.c_str(), 0755) != 0) {
    return ErrnoError(errno, absl::StrCat("create ", config_dir));
  }
  auto save = [&]() -> absl::Status {
    nlohmann::json config = config_.ToJson();
    config["torch_dtype"] = TorchDtypeName(options.dtype);
    TAILOR_RETURN_IF_ERROR(WriteFileAtomically(
        JoinPath(config_dir, "config.json"), config.dump(2) + "\n"));
    CheckpointWriterOptions wo;
    wo.overwrite = options.overwrite;
    wo.max_shard_bytes = options.max_shard_bytes;
    wo.copy_files_from = config_dir;
    TAILOR_ASSIGN_OR_RETURN(std::unique_ptr<CheckpointWriter> writer,
                            CheckpointWriter::Create(out_dir, layout, wo));
    for (const auto& [name, t] : params_) {
      TAILOR_RETURN_IF_ERROR(writer->Write(name, t.detach()));
    }
    return writer->Commit();
  };
  absl::Status status = save();
  absl::Status cleanup = RemoveAll(config_dir);
  return status.ok() ? cleanup : status;
}

std::vector<std::pair<std::string, at::Tensor>> LlamaModel::NamedParameters()
    const {
  return {params_.begin(), params_.end()};
}

const at::Tensor& LlamaModel::Param(const std::string& name) const {
  auto it = params_.find(name);
  TORCH_CHECK(it != params_.end(), "LLaMA model: no parameter '", name, "'");
  return it->second;
}

at::Tensor LlamaModel::Linear(const std::string& weight_name,
                              const at::Tensor& input,
                              ForwardHooks* hooks) const {
  if (hooks != nullptr) hooks->OnLinearInput(weight_name, input);
  return at::linear(input, Param(weight_name));
}

at::Tensor LlamaModel::RmsNorm(const at::Tensor& x,
                               const std::string& weight_name) const {
  const at::Tensor xf = x.to(ComputeType(dtype_));
  const at::Tensor variance = xf.pow(2).mean(-1, /*keepdim=*/true);
  const at::Tensor normed = xf * at::rsqrt(variance + config_.rms_norm_eps);
  return Param(weight_name) * normed.to(dtype_);
}

at::Tensor LlamaModel::Attention(const std::string& prefix, const at::Tensor& x,
                                 const at::Tensor& cos, const at::Tensor& sin,
                                 const at::Tensor& causal_mask,
                                 ForwardHooks* hooks) const {
  const int64_t b = x.size(0), t = x.size(1);
  const int64_t heads = config_.num_attention_heads;
  const int64_t kv_heads = config_.num_key_value_heads;
  const int64_t d = config_.head_dim();
  const std::string p = prefix + "self_attn.";
  at::Tensor q = Linear(p + "q_proj.weight", x, hooks)
                     .reshape({b, t, heads, d})
                     .transpose(1, 2);
  at::Tensor k = Linear(p + "k_proj.weight", x, hooks)
                     .reshape({b, t, kv_heads, d})
                     .transpose(1, 2);
  at::Tensor v = Linear(p + "v_proj.weight", x, hooks)
                     .reshape({b, t, kv_heads, d})
                     .transpose(1, 2);
  q = q * cos + RotateHalf(q) * sin;
  k = k * cos + RotateHalf(k) * sin;
  k = RepeatKv(k, heads / kv_heads);
  v = RepeatKv(v, heads / kv_heads);
  const double scale = 1.0 / std::sqrt(static_cast<double>(d));
  at::Tensor scores = at::matmul(q, k.transpose(-2, -1)) * scale;
  scores =
      scores.masked_fill(causal_mask, -std::numeric_limits<double>::infinity());
  const at::Tensor probs =
      at::softmax(scores, -1, ComputeType(dtype_)).to(dtype_);
  const at::Tensor out =
      at::matmul(probs, v).transpose(1, 2).reshape({b, t, heads * d});
  return Linear(p + "o_proj.weight", out, hooks);
}

at::Tensor LlamaModel::Mlp(const std::string& prefix, const at::Tensor& x,
                           ForwardHooks* hooks) const {
  const std::string p = prefix + "mlp.";
  const at::Tensor gate = Linear(p + "gate_proj.weight", x, hooks);
  const at::Tensor up = Linear(p + "up_proj.weight", x, hooks);
  return Linear(p + "down_proj.weight", at::silu(gate) * up, hooks);
}

at::Tensor LlamaModel::Forward(const at::Tensor& tokens,
                               ForwardHooks* hooks) const {
  TORCH_CHECK(tokens.defined() && tokens.dim() == 2,
              "LLaMA forward: tokens must be a 2-D [batch, time] tensor");
  TORCH_CHECK(at::isIntegralType(tokens.scalar_type(), /*includeBool=*/false),
              "LLaMA forward: tokens must be integers, got ",
              tokens.scalar_type());
  TORCH_CHECK(tokens.size(0) >= 1 && tokens.size(1) >= 1,
              "LLaMA forward: empty batch or sequence");
  const at::Tensor ids = tokens.to(device_, at::kLong);
  // Out-of-range ids would be a device-side assert on CUDA: check first.
  TORCH_CHECK(
      !at::logical_or(ids < 0, ids >= config_.vocab_size).any().item<bool>(),
      "LLaMA forward: token ids must lie in [0, ", config_.vocab_size, ")");
  const int64_t t = ids.size(1);
  const int64_t d = config_.head_dim();
  const at::ScalarType compute = ComputeType(dtype_);
  const auto options = at::TensorOptions().device(device_);

  // RoPE tables [T, d]: angle(pos, i) = pos / theta^(2i/d), duplicated as
  // [freqs, freqs] for the rotate_half layout.
  const at::Tensor inv_freq = at::reciprocal(
      at::pow(config_.rope_theta,
              at::arange(0, d, 2, options.dtype(at::kLong)).to(compute) / d));
  const at::Tensor positions = at::arange(t, options.dtype(compute));
  const at::Tensor freqs = at::outer(positions, inv_freq);
  const at::Tensor angles = at::cat({freqs, freqs}, -1);
  const at::Tensor cos = angles.cos().to(dtype_);
  const at::Tensor sin = angles.sin().to(dtype_);
  // True above the diagonal: key position > query position.
  const at::Tensor causal_mask =
      at::ones({t, t}, options.dtype(at::kBool)).triu(1);

  at::Tensor h = at::embedding(Param(kEmbed), ids);
  for (int64_t l = 0; l < config_.num_hidden_layers; ++l) {
    const std::string p = LayerPrefix(l);
    h = h + Attention(p, RmsNorm(h, p + "input_layernorm.weight"), cos, sin,
                      causal_mask, hooks);
    h = h + Mlp(p, RmsNorm(h, p + "post_attention_layernorm.weight"), hooks);
  }
  h = RmsNorm(h, kFinalNorm);
  const at::Tensor logits = config_.tie_word_embeddings
                                ? at::linear(h, Param(kEmbed))
                                : Linear(kLmHead, h, hooks);
  return logits.to(compute);
}

at::Tensor LlamaModel::Loss(const at::Tensor& tokens,
                            ForwardHooks* hooks) const {
  TORCH_CHECK(tokens.dim() == 2 && tokens.size(1) >= 2,
              "LLaMA loss: tokens must be [batch, time] with time >= 2");
  const at::Tensor logits = Forward(tokens, hooks);
  const int64_t t = logits.size(1);
  const int64_t v = logits.size(2);
  const at::Tensor predicted = logits.narrow(1, 0, t - 1).reshape({-1, v});
  const at::Tensor target =
      tokens.to(device_, at::kLong).narrow(1, 1, t - 1).reshape({-1, 1});
  return at::neg(at::log_softmax(predicted, -1).gather(1, target).mean());
}

absl::Status LlamaModel::CheckTokens(const at::Tensor& tokens) const {
  auto error = [](absl::string_view message) {
    return absl::InvalidArgumentError(absl::StrCat("LLaMA tokens: ", message));
  };
  if (!tokens.defined() || tokens.dim() != 2) {
    return error("must be a 2-D [batch, time] tensor");
  }
  if (!at::isIntegralType(tokens.scalar_type(), /*includeBool=*/false)) {
    return error(absl::StrCat("must be integers, got ",
                              c10::toString(tokens.scalar_type())));
  }
  if (tokens.size(0) < 1 || tokens.size(1) < 1) {
    return error("batch and time must be at least 1");
  }
  TAILOR_ASSIGN_OR_RETURN(bool in_range, CatchTorch("LLaMA tokens", [&] {
                            const at::Tensor ids = tokens.to(at::kLong);
                            return ids.min().item<int64_t>() >= 0 &&
                                   ids.max().item<int64_t>() <
                                       config_.vocab_size;
                          }));
  if (!in_range) {
    return error(
        absl::StrCat("token ids must lie in [0, ", config_.vocab_size, ")"));
  }
  return absl::OkStatus();
}

}  // namespace tailor
