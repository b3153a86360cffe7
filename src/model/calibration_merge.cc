#include "model/calibration_merge.h"

#include <ATen/ATen.h>

#include <map>
#include <memory>

#include "absl/strings/str_cat.h"
#include "io/calibration_file.h"
#include "io/fingerprint.h"
#include "io/safetensors_file.h"
#include "util/file_util.h"
#include "util/sha256.h"
#include "util/status_macros.h"
#include "util/torch_status.h"

namespace tailor {

at::Tensor ShardWindows(const at::Tensor& tokens, int index, int count) {
  const int64_t n = tokens.size(0);
  const int64_t begin = n * index / count;
  const int64_t end = n * (index + 1) / count;
  return tokens.narrow(0, begin, end - begin);
}

absl::StatusOr<CalibrationShard> CalibrationShardRecord(
    const Checkpoint& model, const at::Tensor& tokens, int index, int count) {
  Sha256 model_sha;
  for (const auto& file : model.files()) {
    TAILOR_ASSIGN_OR_RETURN(std::string header, HeaderFingerprint(*file));
    TAILOR_ASSIGN_OR_RETURN(std::string data, DataFingerprint(*file));
    model_sha.Update(absl::StrCat(header, " ", data, "\n"));
  }
  TAILOR_ASSIGN_OR_RETURN(at::Tensor windows,
                          CatchTorch("calibration windows", [&] {
                            return tokens.to(at::kLong).contiguous();
                          }));
  Sha256 data_sha;
  data_sha.Update(absl::StrCat(windows.size(0), "x", windows.size(1), "\n"));
  data_sha.Update(
      absl::string_view(static_cast<const char*>(windows.data_ptr()),
                        windows.numel() * sizeof(int64_t)));
  CalibrationShard record;
  record.index = index;
  record.count = count;
  record.windows = windows.size(0);
  record.model = model_sha.FinalHex();
  record.data = data_sha.FinalHex();
  return record;
}

namespace {

// The parts' shard records agree on one split of one model's windows and
// cover every shard exactly once (MergeCalibrationFiles).
absl::Status CheckShardRecords(
    const std::vector<std::unique_ptr<CalibrationFile>>& files) {
  const CalibrationFile* with = nullptr;
  const CalibrationFile* without = nullptr;
  for (const auto& f : files) (f->shard() ? with : without) = f.get();
  if (with == nullptr) return absl::OkStatus();  // legacy parts: unchecked
  if (without != nullptr) {
    return absl::FailedPreconditionError(absl::StrCat(
        without->path(),
        ": is not a partial file of calibrate --shard (no shard record), "
        "but ",
        with->path(), " is; merge the partial files of one sharded run"));
  }
  const CalibrationFile& first = *files[0];
  const CalibrationShard& a = *first.shard();
  std::map<int, const CalibrationFile*> seen;
  for (const auto& f : files) {
    const CalibrationShard& b = *f->shard();
    const char* differs = b.model != a.model       ? "model"
                          : b.data != a.data       ? "data windows"
                          : b.windows != a.windows ? "number of windows"
                          : b.count != a.count     ? "number of shards"
                                                   : nullptr;
    if (differs != nullptr) {
      return absl::FailedPreconditionError(absl::StrCat(
          f->path(), ": its ", differs, " differs from ", first.path(),
          "'s (shard ", b.index, " of ", b.count, " vs ", a.index, " of ",
          a.count, "): the parts are not of one ",
          b.model != a.model ? "model" : "split of the same windows"));
    }
    if (auto [it, fresh] = seen.emplace(b.index, f.get()); !fresh) {
      return absl::AlreadyExistsError(absl::StrCat(
          "shard ", b.index, " of ", b.count,
          " is given twice: ", it->second->path(), " and ", f->path()));
    }
  }
  for (int i = 0; i < a.count; ++i) {
    if (seen.count(i) == 0) {
      return absl::NotFoundError(absl::StrCat(
          "shard ", i, " of ", a.count,
          " is missing: none of the parts is it (run `tailorctl calibrate "
          "--shard ",
          i, " --shards ", a.count, " ...` and give its file)"));
    }
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status MergeCalibrationFiles(const std::vector<std::string>& parts,
                                   const std::string& out_path,
                                   const UriResolver* resolver) {
  if (parts.empty()) {
    return absl::InvalidArgumentError("--merge: give at least one part file");
  }
  if (PathExists(out_path)) {
    return absl::AlreadyExistsError(
        absl::StrCat(out_path, " already exists; choose a new output path"));
  }
  Checkpoint::Options open;
  open.resolver = resolver;
  std::vector<std::unique_ptr<CalibrationFile>> files;
  for (const std::string& p : parts) {
    TAILOR_ASSIGN_OR_RETURN(std::unique_ptr<CalibrationFile> f,
                            CalibrationFile::Open(p, open));
    files.push_back(std::move(f));
  }
  TAILOR_RETURN_IF_ERROR(CheckShardRecords(files));
  const CalibrationFile& first = *files[0];
  std::map<std::string, int64_t> columns;
  for (const TensorInfo& e : first.entries()) columns[e.name] = e.shape[0];
  int64_t total = 0;
  for (const auto& f : files) {
    std::map<std::string, int64_t> mine;
    for (const TensorInfo& e : f->entries()) mine[e.name] = e.shape[0];
    for (const auto& [key, c] : columns) {
      auto it = mine.find(key);
      if (it == mine.end() || it->second != c) {
        return absl::FailedPreconditionError(absl::StrCat(
            f->path(), ": Hessian ", key,
            it == mine.end()
                ? " is missing"
                : absl::StrCat(" is ", it->second, "x", it->second),
            " (", first.path(), " has it as ", c, "x", c,
            "): the parts are not of one model"));
      }
    }
    if (mine.size() != columns.size()) {
      return absl::FailedPreconditionError(absl::StrCat(
          f->path(), ": has ", mine.size(), " Hessians, ", first.path(),
          " has ", columns.size(), ": the parts are not of one model"));
    }
    if (f->aliases() != first.aliases()) {
      return absl::FailedPreconditionError(
          absl::StrCat(f->path(), ": its aliases differ from ", first.path(),
                       "'s: the parts are not of one model"));
    }
    total += f->nsamples();
  }
  auto merged = [&](const std::string& key) -> absl::StatusOr<at::Tensor> {
    at::Tensor sum;
    for (const auto& f : files) {
      TAILOR_ASSIGN_OR_RETURN(at::Tensor h, f->Load(key));
      TAILOR_ASSIGN_OR_RETURN(at::Tensor w, CatchTorch(key, [&] {
                                return h.to(at::kDouble) *
                                       static_cast<double>(f->nsamples());
                              }));
      sum = sum.defined() ? sum + w : w;
    }
    return CatchTorch(key, [&] {
      return (sum / static_cast<double>(total)).to(at::kFloat).contiguous();
    });
  };
  return WriteCalibrationFile(out_path, total, columns, first.aliases(), merged,
                              resolver);
}

}  // namespace tailor
