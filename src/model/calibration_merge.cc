#include "model/calibration_merge.h"

#include <ATen/ATen.h>

#include <map>
#include <memory>

#include "absl/strings/str_cat.h"
#include "io/calibration_file.h"
#include "util/file_util.h"
#include "util/status_macros.h"
#include "util/torch_status.h"

namespace tailor {

at::Tensor ShardWindows(const at::Tensor& tokens, int index, int count) {
  const int64_t n = tokens.size(0);
  const int64_t begin = n * index / count;
  const int64_t end = n * (index + 1) / count;
  return tokens.narrow(0, begin, end - begin);
}

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
