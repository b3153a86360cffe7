#include "io/lora_adapter.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <optional>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "io/peft_config.h"
#include "io/peft_keys.h"
#include "io/tensor_convert.h"
#include "storage/read_local_file.h"
#include "util/file_util.h"
#include "util/quote.h"
#include "util/status_macros.h"
#include "util/torch_status.h"

// How a PEFT LoRA adapter directory is read (PEFT's own code is the
// reference: peft/utils/save_and_load.py, peft/tuners/lora/{config,layer,
// model}.py, peft/utils/other.py).
//
// The config is io/peft_config.h, the tensor names io/peft_keys.h; this
// file checks the factors against the base and merges.
//
// Merge (LoraLayer.get_delta_weight), with scaling = alpha / r (alpha /
// sqrt(r) with use_rslora), r and alpha from rank_pattern / alpha_pattern
// when a key matches the module:
//   Linear:     W += scaling * B @ A  (transposed if fan_in_fan_out)
//   Embedding:  W += scaling * (B @ A)^T, A: (r, num_embeddings), B: (dim, r)

namespace tailor {
namespace {

// Real adapter configs are a few KB; EVA/rank_pattern-heavy ones stay well
// under 1 MB.
constexpr uint64_t kMaxConfigBytes = 16ull << 20;

std::string Shape(const std::vector<int64_t>& shape) {
  return absl::StrCat("[", absl::StrJoin(shape, ", "), "]");
}

// The adapter file's tensors, classified: LoRA factor pairs by PEFT module,
// and full tensors by the name they replace (before base-name mapping).
struct FactorPair {
  const TensorInfo* a = nullptr;
  const TensorInfo* b = nullptr;
  bool embedding = false;
};
struct AdapterTensors {
  std::map<std::string, FactorPair> pairs;
  std::map<std::string, const TensorInfo*> full;
};

// Stage 1: <adapter_dir>/adapter_config.json, read (through the resolver's
// local-path check when there is one) and parsed.
absl::StatusOr<PeftConfig> ReadAdapterConfig(
    const std::string& adapter_dir, const Checkpoint::Options& options) {
  const std::string config_path = JoinPath(adapter_dir, kAdapterConfigName);
  TAILOR_ASSIGN_OR_RETURN(
      const std::string text,
      ReadLocalFile(options.resolver, config_path, kMaxConfigBytes));
  return ParsePeftConfig(config_path, text);
}

// Whether `path` exists, through the resolver when there is one (it answers
// for remote paths too).
bool Exists(const std::string& path, const UriResolver* resolver) {
  if (resolver == nullptr || !IsRemoteUri(path)) return PathExists(path);
  return resolver->PathIsRegularFile(path) || resolver->PathIsDirectory(path);
}

// Stage 2: the weights file exists; a pickled one is refused by name.
absl::Status CheckWeightsFile(const std::string& adapter_dir,
                              const UriResolver* resolver) {
  if (Exists(JoinPath(adapter_dir, kAdapterWeightsName), resolver)) {
    return absl::OkStatus();
  }
  for (const char* pickle : {"adapter_model.bin", "adapter_model.pt"}) {
    const std::string path = JoinPath(adapter_dir, pickle);
    if (Exists(path, resolver)) {
      TAILOR_RETURN_IF_ERROR(RefuseIfPickleName(path));
    }
  }
  return absl::NotFoundError(
      absl::StrCat(adapter_dir, ": no ", kAdapterWeightsName,
                   " (a PEFT LoRA adapter directory holds ", kAdapterConfigName,
                   " and ", kAdapterWeightsName, ")"));
}

// Stage 3: every key classified; factors come in A/B pairs of one kind, and
// no module or replaced tensor appears twice.
absl::StatusOr<AdapterTensors> ClassifyTensors(const Checkpoint& adapter) {
  const std::string& file = adapter.description();
  if (adapter.tensors().empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat(file, ": the adapter holds no tensors"));
  }
  AdapterTensors out;
  for (const TensorInfo& t : adapter.tensors()) {
    TAILOR_ASSIGN_OR_RETURN(PeftKey k, ParsePeftKey(file, t.name));
    if (!k.lora) {
      auto [it, inserted] = out.full.emplace(k.target, &t);
      if (!inserted) {
        return AdapterTensorError(
            file, t.name,
            absl::StrCat("replaces ", Quote(k.target), ", which tensor ",
                         Quote(it->second->name), " already replaces"));
      }
      continue;
    }
    FactorPair& pair = out.pairs[k.module];
    const TensorInfo*& slot = k.factor == PeftFactor::kA ? pair.a : pair.b;
    const TensorInfo* other = k.factor == PeftFactor::kA ? pair.b : pair.a;
    if (slot != nullptr) {
      return AdapterTensorError(
          file, t.name,
          absl::StrCat("module ", Quote(k.module),
                       " already has this factor in tensor ", Quote(slot->name),
                       " (one adapter per file is supported)"));
    }
    if (other != nullptr && pair.embedding != k.embedding) {
      return AdapterTensorError(
          file, t.name,
          absl::StrCat("mixes Linear and Embedding LoRA factors "
                       "with tensor ",
                       Quote(other->name)));
    }
    slot = &t;
    pair.embedding = k.embedding;
  }
  for (const auto& [module, pair] : out.pairs) {
    if (pair.a == nullptr || pair.b == nullptr) {
      const TensorInfo* have = pair.a != nullptr ? pair.a : pair.b;
      const char* need =
          pair.embedding
              ? (pair.a != nullptr ? "lora_embedding_B" : "lora_embedding_A")
              : (pair.a != nullptr ? "lora_B" : "lora_A");
      return AdapterTensorError(
          file, have->name,
          absl::StrCat("module ", Quote(module), " has no matching ", need,
                       " tensor (LoRA factors come in A/B "
                       "pairs)"));
    }
  }

  return out;
}

// Stage 4: one base-name mapping for every module weight and full tensor.
absl::StatusOr<PeftNameMap> ResolveNames(const TensorSource& base,
                                         const AdapterTensors& tensors,
                                         absl::string_view file) {
  std::vector<PeftTarget> targets;
  for (const auto& [module, pair] : tensors.pairs) {
    targets.push_back({absl::StrCat(module, ".weight"), pair.a->name, true});
  }
  for (const auto& [target, info] : tensors.full) {
    targets.push_back({target, info->name, false});
  }
  std::sort(
      targets.begin(), targets.end(),
      [](const PeftTarget& x, const PeftTarget& y) { return x.key < y.key; });
  return ChoosePeftNameMap(base, targets, file);
}

bool NeedsTranspose(const LoraModule& m, bool fan_in_fan_out) {
  return m.embedding || fan_in_fan_out;
}

// Stage 5: the LoRA modules, each checked against its base tensor (2-D
// floating point, ranks, shapes), sorted by base tensor. `merged_from`
// gets base tensor -> module.
absl::StatusOr<std::vector<LoraModule>> ResolveModules(
    const TensorSource& base, const AdapterTensors& tensors,
    const PeftNameMap& map, const PeftConfig& config, const std::string& file,
    std::map<std::string, std::string>* merged_from_out) {
  std::vector<LoraModule> modules;
  std::map<std::string, std::string>& merged_from = *merged_from_out;
  for (const auto& [module, pair] : tensors.pairs) {
    LoraModule m;
    m.base_tensor = map.Apply(absl::StrCat(module, ".weight"));
    m.a_key = pair.a->name;
    m.b_key = pair.b->name;
    m.embedding = pair.embedding;
    if (auto [it, inserted] = merged_from.emplace(m.base_tensor, module);
        !inserted) {
      return AdapterTensorError(
          file, m.a_key,
          absl::StrCat("module ", Quote(module), " and module ",
                       Quote(it->second), " both map to base tensor ",
                       Quote(m.base_tensor)));
    }
    const TensorInfo* w = base.Find(m.base_tensor);  // resolved above
    if (!IsFloatingDType(w->dtype) || w->shape.size() != 2) {
      return AdapterTensorError(
          file, m.a_key,
          absl::StrCat("base tensor ", Quote(m.base_tensor), " is ",
                       DTypeName(w->dtype), " ", Shape(w->shape),
                       "; LoRA merges only into 2-D floating-point (F16, "
                       "BF16, F32, F64) weights"));
    }
    for (const TensorInfo* f : {pair.a, pair.b}) {
      if (!IsFloatingDType(f->dtype) || f->shape.size() != 2) {
        return AdapterTensorError(
            file, f->name,
            absl::StrCat("is ", DTypeName(f->dtype), " ", Shape(f->shape),
                         "; LoRA factors must be 2-D "
                         "floating-point matrices"));
      }
    }
    const PeftPattern* rank_match =
        MatchPeftPattern(config.rank_patterns, module);
    const PeftPattern* alpha_match =
        MatchPeftPattern(config.alpha_patterns, module);
    m.rank = rank_match != nullptr ? static_cast<int>(rank_match->value)
                                   : config.config.r;
    const double alpha =
        alpha_match != nullptr ? alpha_match->value : config.config.lora_alpha;
    const std::string rank_source =
        rank_match != nullptr
            ? absl::StrCat("rank_pattern[", Quote(rank_match->key),
                           "] = ", m.rank)
            : absl::StrCat("r = ", m.rank);
    if (pair.a->shape[0] != m.rank || pair.b->shape[1] != m.rank) {
      const TensorInfo* bad = pair.a->shape[0] != m.rank ? pair.a : pair.b;
      return AdapterTensorError(
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
    const bool transpose = NeedsTranspose(m, config.config.fan_in_fan_out);
    const int64_t out = transpose ? w->shape[1] : w->shape[0];
    const int64_t in = transpose ? w->shape[0] : w->shape[1];
    if (pair.a->shape[1] != in || pair.b->shape[0] != out) {
      const TensorInfo* bad = pair.a->shape[1] != in ? pair.a : pair.b;
      return AdapterTensorError(
          file, bad->name,
          absl::StrCat(
              "shape mismatch: lora_A ", Shape(pair.a->shape), " and lora_B ",
              Shape(pair.b->shape), " give an update B @ A of shape [",
              pair.b->shape[0], ", ", pair.a->shape[1], "]",
              transpose ? " (applied transposed)" : "", " but base tensor ",
              Quote(m.base_tensor), " is ", Shape(w->shape),
              m.embedding ? " (embedding LoRA: A is [r, num_embeddings], B "
                            "is [dim, r])"
              : config.config.fan_in_fan_out
                  ? " (fan_in_fan_out: the base weight is [in, out])"
                  : " (the base weight is [out, in])"));
    }
    m.scaling = config.config.use_rslora
                    ? alpha / std::sqrt(static_cast<double>(m.rank))
                    : alpha / m.rank;
    modules.push_back(std::move(m));
  }
  std::sort(modules.begin(), modules.end(),
            [](const LoraModule& x, const LoraModule& y) {
              return x.base_tensor < y.base_tensor;
            });
  return modules;
}

// Why adapter tensor `info` cannot replace base tensor `name` (`w`), which
// the LoRA modules of `merged_from` (base name -> module) may update; empty
// if it can.
std::string ReplacementProblem(
    const TensorInfo& info, const std::string& name, const TensorInfo& w,
    const std::map<std::string, std::string>& merged_from) {
  if (merged_from.count(name) > 0) {
    return absl::StrCat("replaces base tensor ", Quote(name),
                        ", which LoRA module ", Quote(merged_from.at(name)),
                        " also updates; refusing to guess which applies");
  }
  if (info.shape != w.shape) {
    return absl::StrCat("shape ", Shape(info.shape),
                        " does not match base tensor ", Quote(name), " ",
                        Shape(w.shape),
                        " (a modules_to_save tensor replaces the base tensor "
                        "and must have its shape)");
  }
  const bool compatible = IsFloatingDType(w.dtype) ? IsFloatingDType(info.dtype)
                                                   : info.dtype == w.dtype;
  if (!compatible) {
    return absl::StrCat("dtype ", DTypeName(info.dtype),
                        " cannot stand in for base tensor ", Quote(name), " (",
                        DTypeName(w.dtype),
                        "); floating tensors may differ only in float width, "
                        "others must match exactly");
  }
  return "";
}

// Stage 6: the full-tensor replacements (modules_to_save), base name ->
// adapter key; each must fit its base tensor and not be LoRA-merged too.
absl::StatusOr<std::map<std::string, std::string>> ResolveReplacements(
    const TensorSource& base, const AdapterTensors& tensors,
    const PeftNameMap& map,
    const std::map<std::string, std::string>& merged_from,
    const std::string& file) {
  std::map<std::string, std::string> replaced;
  for (const auto& [target, info] : tensors.full) {
    const std::string name = map.Apply(target);
    const TensorInfo* w = base.Find(name);  // resolved above
    const std::string why = ReplacementProblem(*info, name, *w, merged_from);
    if (!why.empty()) return AdapterTensorError(file, info->name, why);
    replaced.emplace(name, info->name);
  }
  return replaced;
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

bool IsLoraAdapterDir(const std::string& dir, const UriResolver& resolver) {
  if (!IsRemoteUri(dir)) return IsLoraAdapterDir(dir);
  return resolver.PathIsDirectory(dir) &&
         resolver.PathIsRegularFile(JoinPath(dir, kAdapterConfigName));
}

absl::StatusOr<std::unique_ptr<LoraFineTuned>> LoraFineTuned::Create(
    const TensorSource* base, const std::string& adapter_dir,
    const Checkpoint::Options& options) {
  if (base == nullptr) {
    return absl::InvalidArgumentError("LoraFineTuned: no base checkpoint");
  }
  if (options.resolver != nullptr
          ? !options.resolver->PathIsDirectory(adapter_dir)
          : !IsDirectory(adapter_dir)) {
    return absl::NotFoundError(
        absl::StrCat("LoRA adapter directory ", adapter_dir, " not found"));
  }
  TAILOR_ASSIGN_OR_RETURN(PeftConfig parsed,
                          ReadAdapterConfig(adapter_dir, options));
  TAILOR_RETURN_IF_ERROR(CheckWeightsFile(adapter_dir, options.resolver));
  std::unique_ptr<LoraFineTuned> lora(new LoraFineTuned());
  lora->base_ = base;
  lora->config_ = parsed.config;
  lora->description_ = absl::StrCat(adapter_dir, " over ", base->description());
  TAILOR_ASSIGN_OR_RETURN(
      lora->adapter_,
      Checkpoint::Open(JoinPath(adapter_dir, kAdapterWeightsName), options));
  const std::string& file = lora->adapter_->description();
  TAILOR_ASSIGN_OR_RETURN(AdapterTensors tensors,
                          ClassifyTensors(*lora->adapter_));
  TAILOR_ASSIGN_OR_RETURN(PeftNameMap map, ResolveNames(*base, tensors, file));
  std::map<std::string, std::string> merged_from;  // base tensor -> module
  TAILOR_ASSIGN_OR_RETURN(
      lora->modules_,
      ResolveModules(*base, tensors, map, parsed, file, &merged_from));
  TAILOR_ASSIGN_OR_RETURN(
      lora->replaced_,
      ResolveReplacements(*base, tensors, map, merged_from, file));
  return lora;
}

const LoraModule* LoraFineTuned::FindModule(absl::string_view name) const {
  auto m = std::lower_bound(modules_.begin(), modules_.end(), name,
                            [](const LoraModule& x, absl::string_view n) {
                              return x.base_tensor < n;
                            });
  if (m == modules_.end() || m->base_tensor != name) return nullptr;
  return &*m;
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

  const LoraModule* m = FindModule(name);
  if (m == nullptr) return base_->Read(name, options);
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

  const LoraModule* m = FindModule(name);
  if (m == nullptr) return base_->ReadRaw(name);
  TAILOR_ASSIGN_OR_RETURN(
      at::Tensor merged,
      MergeModule(*base_, *adapter_, *m, info->dtype, config_.fan_in_fan_out));
  TAILOR_ASSIGN_OR_RETURN(at::Tensor stored,
                          ToStoredTensor(merged, info->dtype, label));
  return TensorBytes(stored, *info, label);
}

}  // namespace tailor
