#include "model/calibrate.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <memory>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "io/checkpoint.h"
#include "io/open_checkpoint.h"
#include "model/calibration_merge.h"
#include "model/hessian_collector.h"
#include "model/llama_config.h"
#include "storage/read_local_file.h"
#include "util/device.h"
#include "util/file_util.h"
#include "util/staged_output.h"
#include "util/status_macros.h"
#include "util/torch_status.h"

namespace tailor {
namespace {

// Raw-byte calibration data larger than this is refused (use safetensors).
constexpr uint64_t kMaxTextBytes = 1ull << 30;

absl::StatusOr<at::Tensor> ReadTokenTensor(const std::string& path,
                                           const UriResolver* resolver) {
  Checkpoint::Options options;
  options.resolver = resolver;  // opened beneath its root (CheckLocalPath)
  TAILOR_ASSIGN_OR_RETURN(std::unique_ptr<Checkpoint> file,
                          Checkpoint::Open(path, options));
  const TensorInfo* chosen = nullptr;
  for (const TensorInfo& info : file->tensors()) {
    if (IsFloatingDType(info.dtype) || info.dtype == DType::kBOOL ||
        info.dtype == DType::kF8_E4M3 || info.dtype == DType::kF8_E5M2) {
      continue;
    }
    if (chosen != nullptr) {
      return absl::InvalidArgumentError(absl::StrCat(
          path,
          ": calibration data must hold exactly one integer tensor; "
          "found '",
          chosen->name, "' and '", info.name, "'"));
    }
    chosen = &info;
  }
  if (chosen == nullptr) {
    return absl::InvalidArgumentError(absl::StrCat(
        path,
        ": calibration data holds no integer tensor (expected token ids, "
        "e.g. 'input_ids' as I32 or I64)"));
  }
  if (chosen->shape.size() != 1 && chosen->shape.size() != 2) {
    return absl::InvalidArgumentError(absl::StrCat(
        path, ": tensor '", chosen->name, "' has ", chosen->shape.size(),
        " dimensions; token ids must be 1-D (a stream) or 2-D "
        "[sequences, tokens]"));
  }
  if (chosen->dtype == DType::kU16 || chosen->dtype == DType::kU32 ||
      chosen->dtype == DType::kU64) {
    return absl::InvalidArgumentError(absl::StrCat(
        path, ": tensor '", chosen->name, "' is ", DTypeName(chosen->dtype),
        "; store token ids as I32 or I64"));
  }
  TAILOR_ASSIGN_OR_RETURN(at::Tensor tokens, file->Read(chosen->name));
  return CatchTorch(path, [&] { return tokens.to(at::kLong); });
}

}  // namespace

at::Tensor EvenlySpacedWindows(const at::Tensor& stream, int64_t samples,
                               int64_t seq_len) {
  const int64_t span = stream.numel() - seq_len;
  std::vector<at::Tensor> rows;
  rows.reserve(samples);
  for (int64_t i = 0; i < samples; ++i) {
    const int64_t offset = samples == 1 ? 0 : i * span / (samples - 1);
    rows.push_back(stream.narrow(0, offset, seq_len));
  }
  return at::stack(rows);
}

absl::StatusOr<at::Tensor> LoadCalibrationTokens(const std::string& path,
                                                 int64_t samples,
                                                 int64_t seq_len,
                                                 const UriResolver* resolver) {
  if (samples < 1) {
    return absl::InvalidArgumentError("calibration: samples must be >= 1");
  }
  if (seq_len < 1) {
    return absl::InvalidArgumentError("calibration: seq-len must be >= 1");
  }
  at::Tensor tokens;
  if (absl::EndsWith(path, ".safetensors")) {
    TAILOR_ASSIGN_OR_RETURN(tokens, ReadTokenTensor(path, resolver));
  } else {
    TAILOR_RETURN_IF_ERROR(RefuseIfPickleName(path));
    TAILOR_ASSIGN_OR_RETURN(const std::string bytes,
                            ReadLocalFile(resolver, path, kMaxTextBytes));
    TAILOR_RETURN_IF_ERROR(RefuseIfPickle(bytes.substr(0, 64), path));
    tokens = at::empty({static_cast<int64_t>(bytes.size())}, at::kLong);
    int64_t* out = tokens.data_ptr<int64_t>();
    for (size_t i = 0; i < bytes.size(); ++i) {
      out[i] = static_cast<uint8_t>(bytes[i]);
    }
  }
  if (tokens.dim() == 2) {
    if (tokens.size(0) < samples || tokens.size(1) < seq_len) {
      return absl::InvalidArgumentError(
          absl::StrCat(path, ": holds ", tokens.size(0), " sequences of ",
                       tokens.size(1), " tokens; need at least ", samples,
                       " of ", seq_len, " (lower --samples or --seq-len)"));
    }
    return tokens.narrow(0, 0, samples).narrow(1, 0, seq_len).contiguous();
  }
  if (tokens.numel() < seq_len) {
    return absl::InvalidArgumentError(absl::StrCat(
        path, ": holds ", tokens.numel(), " tokens, fewer than one window of ",
        seq_len, " (lower --seq-len)"));
  }
  return EvenlySpacedWindows(tokens, samples, seq_len);
}

absl::Status WriteCalibration(const LlamaModel& model, const at::Tensor& tokens,
                              const std::string& out_path,
                              const CalibrateOptions& options) {
  if (options.batch_size < 1) {
    return absl::InvalidArgumentError("calibration: batch size must be >= 1");
  }
  TAILOR_RETURN_IF_ERROR(model.CheckTokens(tokens));
  if (PathExists(out_path)) {
    return absl::AlreadyExistsError(
        absl::StrCat(out_path, " already exists; choose a new output path"));
  }
  HessianCollector collector;
  const int64_t n = tokens.size(0);
  for (int64_t begin = 0; begin < n; begin += options.batch_size) {
    const int64_t b = std::min(options.batch_size, n - begin);
    TAILOR_RETURN_IF_ERROR(
        collector.Calibrate(model, tokens.narrow(0, begin, b)));
    if (options.on_progress) options.on_progress(begin + b, n);
  }
  return collector.Write(out_path, options.resolver, options.metadata);
}

absl::Status RunCalibrateJob(const CalibrateJob& job,
                             const UriResolver& resolver) {
  TAILOR_ASSIGN_OR_RETURN(at::Device device, ResolveDevice(job.device));
  TAILOR_ASSIGN_OR_RETURN(std::string model_dir,
                          resolver.ResolveExisting(job.model_uri));
  const std::string config_path =
      resolver.PathIsDirectory(model_dir)
          ? JoinPath(model_dir, "config.json")
          : JoinPath(Dirname(model_dir), "config.json");
  TAILOR_ASSIGN_OR_RETURN(LlamaConfig config,
                          LlamaConfig::Load(config_path, &resolver));
  TAILOR_ASSIGN_OR_RETURN(std::unique_ptr<Checkpoint> checkpoint,
                          OpenCheckpointUri(job.model_uri, resolver));
  TAILOR_ASSIGN_OR_RETURN(std::string data_path,
                          resolver.ResolveExisting(job.data_uri));
  TAILOR_ASSIGN_OR_RETURN(std::string out_path,
                          resolver.ResolveForWrite(job.out_uri));
  if (IsRemoteUri(out_path)) {
    // Fails fast on an existing object (or a read-only scheme); the write
    // checks again (io/calibration_file.h).
    TAILOR_RETURN_IF_ERROR(CreateStagedOutput(out_path,
                                              StagedOutput::Kind::kFile,
                                              /*overwrite=*/false, &resolver)
                               .status());
  } else if (PathExists(out_path)) {
    return absl::AlreadyExistsError(
        absl::StrCat(out_path, " already exists; choose a new output path"));
  }
  TAILOR_ASSIGN_OR_RETURN(
      at::Tensor tokens,
      LoadCalibrationTokens(data_path, job.samples, job.seq_len, &resolver));
  TAILOR_ASSIGN_OR_RETURN(bool in_range, CatchTorch(data_path, [&] {
                            return tokens.min().item<int64_t>() >= 0 &&
                                   tokens.max().item<int64_t>() <
                                       config.vocab_size;
                          }));
  if (!in_range) {
    return absl::InvalidArgumentError(absl::StrCat(
        data_path, ": token ids must lie in [0, ", config.vocab_size,
        ") (the model's vocab_size); was the data made with this model's "
        "tokenizer?"));
  }
  std::map<std::string, std::string> shard_metadata;
  if (job.shard_count > 0) {
    if (job.shard_index < 0 || job.shard_index >= job.shard_count) {
      return absl::InvalidArgumentError(absl::StrCat(
          "--shard: must be in 0..", job.shard_count - 1, " (--shards is ",
          job.shard_count, "), not ", job.shard_index));
    }
    if (job.samples < job.shard_count) {
      return absl::InvalidArgumentError(
          absl::StrCat("--shards: ", job.shard_count, " shards need at least ",
                       "as many --samples, not ", job.samples));
    }
    TAILOR_ASSIGN_OR_RETURN(
        CalibrationShard record,
        CalibrationShardRecord(*checkpoint, tokens, job.shard_index,
                               job.shard_count));
    shard_metadata[kCalibrationShardKey] = CalibrationShardJson(record);
    tokens = ShardWindows(tokens, job.shard_index, job.shard_count);
  }
  TAILOR_ASSIGN_OR_RETURN(
      LlamaModel model,
      LlamaModel::Load(*checkpoint, config, device, at::kFloat));
  CalibrateOptions options = job.options;
  options.resolver = &resolver;
  options.metadata = std::move(shard_metadata);
  return WriteCalibration(model, tokens, out_path, options);
}

}  // namespace tailor
