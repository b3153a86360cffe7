// Writes the embedded demo inputs: a small LLaMA-shaped checkpoint (BF16,
// Hugging Face tensor names, sharded with an index, config.json), a PEFT
// LoRA adapter for it, and a calibration file (tailor-hessian/1) for the
// adapter's task. Deterministic (fixed seed). Synthetic weights: this shows
// the pipeline, not model quality (the real-data benchmark does that).
//
//   make_demo_checkpoint OUT_DIR

#include <ATen/ATen.h>
#include <sys/stat.h>

#include <iostream>

#include "absl/strings/str_cat.h"
#include "io/checkpoint_writer.h"
#include "util/file_util.h"

namespace {

constexpr int kLayers = 2, kHidden = 64, kIntermediate = 172, kVocab = 260;

int Fail(const absl::Status& s) {
  std::cerr << "make_demo_checkpoint: " << s << "\n";
  return 1;
}

tailor::TensorInfo Info(const std::string& name, std::vector<int64_t> shape,
                        tailor::DType dtype = tailor::DType::kBF16) {
  int64_t numel = 1;
  for (int64_t d : shape) numel *= d;
  return {name,
          dtype,
          shape,
          numel,
          static_cast<uint64_t>(numel) * tailor::DTypeSize(dtype),
          ""};
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 2) {
    std::cerr << "usage: make_demo_checkpoint OUT_DIR\n";
    return 2;
  }
  const std::string out = argv[1];
  ::mkdir(out.c_str(), 0755);
  const std::string base = tailor::JoinPath(out, "tiny-llama");
  const std::string lora = tailor::JoinPath(out, "tiny-llama-lora");
  (void)tailor::RemoveAll(base);
  (void)tailor::RemoveAll(lora);
  at::manual_seed(20240212);

  std::vector<tailor::TensorInfo> layout = {
      Info("model.embed_tokens.weight", {kVocab, kHidden}),
      Info("model.norm.weight", {kHidden}),
      Info("lm_head.weight", {kVocab, kHidden})};
  for (int l = 0; l < kLayers; ++l) {
    const std::string p = absl::StrCat("model.layers.", l, ".");
    for (const char* proj : {"q_proj", "k_proj", "v_proj", "o_proj"}) {
      layout.push_back(
          Info(p + "self_attn." + proj + ".weight", {kHidden, kHidden}));
    }
    layout.push_back(
        Info(p + "mlp.gate_proj.weight", {kIntermediate, kHidden}));
    layout.push_back(Info(p + "mlp.up_proj.weight", {kIntermediate, kHidden}));
    layout.push_back(
        Info(p + "mlp.down_proj.weight", {kHidden, kIntermediate}));
    layout.push_back(Info(p + "input_layernorm.weight", {kHidden}));
    layout.push_back(Info(p + "post_attention_layernorm.weight", {kHidden}));
  }
  tailor::CheckpointWriterOptions options;
  options.max_shard_bytes = 100'000;  // several shards, as real checkpoints
  auto writer = tailor::CheckpointWriter::Create(base, layout, options);
  if (!writer.ok()) return Fail(writer.status());
  for (const tailor::TensorInfo& t : layout) {
    at::Tensor value =
        t.shape.size() == 1 ? at::ones(t.shape) : at::randn(t.shape) * 0.02;
    if (absl::Status s = (*writer)->Write(t.name, value); !s.ok())
      return Fail(s);
  }
  if (absl::Status s = (*writer)->Commit(); !s.ok()) return Fail(s);
  const std::string config = absl::StrCat(
      "{\n  \"architectures\": [\"LlamaForCausalLM\"],\n"
      "  \"model_type\": \"llama\",\n  \"hidden_size\": ",
      kHidden, ",\n  \"intermediate_size\": ", kIntermediate,
      ",\n  \"num_hidden_layers\": ", kLayers,
      ",\n  \"num_attention_heads\": 4,\n  \"num_key_value_heads\": 4,\n"
      "  \"rms_norm_eps\": 1e-06,\n  \"rope_theta\": 10000.0,\n"
      "  \"vocab_size\": ",
      kVocab,
      ",\n  \"tie_word_embeddings\": false,\n  \"torch_dtype\": "
      "\"bfloat16\"\n}\n");
  if (absl::Status s = tailor::WriteFileAtomically(
          tailor::JoinPath(base, "config.json"), config);
      !s.ok()) {
    return Fail(s);
  }

  // LoRA (r=4, alpha=8) on q_proj and v_proj of every layer.
  std::vector<tailor::TensorInfo> adapter_layout;
  for (int l = 0; l < kLayers; ++l) {
    for (const char* proj : {"q_proj", "v_proj"}) {
      const std::string p = absl::StrCat("base_model.model.model.layers.", l,
                                         ".self_attn.", proj);
      adapter_layout.push_back(
          Info(p + ".lora_A.weight", {4, kHidden}, tailor::DType::kF32));
      adapter_layout.push_back(
          Info(p + ".lora_B.weight", {kHidden, 4}, tailor::DType::kF32));
    }
  }
  const std::string staging = tailor::JoinPath(out, "tiny-llama-lora.weights");
  (void)tailor::RemoveAll(staging);
  auto adapter_writer =
      tailor::CheckpointWriter::Create(staging, adapter_layout, {});
  if (!adapter_writer.ok()) return Fail(adapter_writer.status());
  for (const tailor::TensorInfo& t : adapter_layout) {
    if (absl::Status s =
            (*adapter_writer)->Write(t.name, at::randn(t.shape) * 0.05);
        !s.ok()) {
      return Fail(s);
    }
  }
  if (absl::Status s = (*adapter_writer)->Commit(); !s.ok()) return Fail(s);
  ::mkdir(lora.c_str(), 0755);
  if (::rename(tailor::JoinPath(staging, "model.safetensors").c_str(),
               tailor::JoinPath(lora, "adapter_model.safetensors").c_str()) !=
      0) {
    std::cerr << "make_demo_checkpoint: cannot move adapter weights\n";
    return 1;
  }
  (void)tailor::RemoveAll(staging);
  if (absl::Status s = tailor::WriteFileAtomically(
          tailor::JoinPath(lora, "adapter_config.json"),
          "{\n  \"peft_type\": \"LORA\",\n  \"r\": 4,\n  \"lora_alpha\": 8,\n"
          "  \"target_modules\": [\"q_proj\", \"v_proj\"],\n"
          "  \"fan_in_fan_out\": false,\n  \"bias\": \"none\"\n}\n");
      !s.ok()) {
    return Fail(s);
  }
  // Calibration statistics for the adapter's task: H = (2/n) X^T X of random
  // correlated inputs per linear input (q/k/v and gate/up share theirs).
  const std::string cal_staging = tailor::JoinPath(out, "calibration.staging");
  (void)tailor::RemoveAll(cal_staging);
  std::vector<tailor::TensorInfo> cal_layout;
  std::string aliases = "{";
  for (int l = 0; l < kLayers; ++l) {
    const std::string p = absl::StrCat("model.layers.", l, ".");
    cal_layout.push_back(Info(p + "self_attn.q_proj.hessian",
                              {kHidden, kHidden}, tailor::DType::kF32));
    cal_layout.push_back(Info(p + "self_attn.o_proj.hessian",
                              {kHidden, kHidden}, tailor::DType::kF32));
    cal_layout.push_back(Info(p + "mlp.up_proj.hessian", {kHidden, kHidden},
                              tailor::DType::kF32));
    cal_layout.push_back(Info(p + "mlp.down_proj.hessian",
                              {kIntermediate, kIntermediate},
                              tailor::DType::kF32));
    for (const char* shared : {"k_proj", "v_proj"}) {
      absl::StrAppend(&aliases, aliases.size() > 1 ? ", " : "", "\"", p,
                      "self_attn.", shared, ".weight\": \"", p,
                      "self_attn.q_proj.hessian\"");
    }
    absl::StrAppend(&aliases, ", \"", p, "mlp.gate_proj.weight\": \"", p,
                    "mlp.up_proj.hessian\"");
  }
  aliases += "}";
  constexpr int64_t kSamples = 512;
  tailor::CheckpointWriterOptions cal_options;
  cal_options.metadata = {{"format", "tailor-hessian/1"},
                          {"nsamples", std::to_string(kSamples)},
                          {"aliases", aliases}};
  auto cal_writer =
      tailor::CheckpointWriter::Create(cal_staging, cal_layout, cal_options);
  if (!cal_writer.ok()) return Fail(cal_writer.status());
  for (const tailor::TensorInfo& t : cal_layout) {
    const int64_t c = t.shape[0];
    at::Tensor x =
        at::randn({kSamples, c}).matmul(at::eye(c) + 0.2 * at::randn({c, c}));
    at::Tensor h = 2.0 / kSamples * x.t().matmul(x);
    if (absl::Status s = (*cal_writer)->Write(t.name, (h + h.t()) / 2); !s.ok())
      return Fail(s);
  }
  if (absl::Status s = (*cal_writer)->Commit(); !s.ok()) return Fail(s);
  const std::string cal =
      tailor::JoinPath(out, "tiny-llama-lora.hessians.safetensors");
  if (::rename(tailor::JoinPath(cal_staging, "model.safetensors").c_str(),
               cal.c_str()) != 0) {
    std::cerr << "make_demo_checkpoint: cannot move the calibration file\n";
    return 1;
  }
  (void)tailor::RemoveAll(cal_staging);
  std::cout << "wrote " << base << ", " << lora << " and " << cal << "\n";
  return 0;
}
