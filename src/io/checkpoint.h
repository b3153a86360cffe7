#ifndef TAILOR_IO_CHECKPOINT_H_
#define TAILOR_IO_CHECKPOINT_H_

#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "io/safetensors_file.h"
#include "io/tensor_source.h"
#include "storage/uri_resolver.h"

namespace tailor {

inline constexpr char kIndexFileName[] = "model.safetensors.index.json";
inline constexpr char kSingleFileName[] = "model.safetensors";

// A Hugging Face safetensors checkpoint: a directory holding
// `model.safetensors.index.json` (weight_map: tensor -> shard) and its shards,
// or a single `model.safetensors`, or one `.safetensors` file given directly.
//
// Open() validates every file before any tensor is handed out: each shard's
// header (safetensors_header.h), the index (shard names are plain file names;
// every tensor in the index is in its shard and every shard tensor is in the
// index under that shard; no tensor in two shards). Only headers are read;
// tensors are read one at a time by Read().
//
// Thread-safe after Open().
class Checkpoint : public TensorSource {
 public:
  struct Options {
    // When set, every file opened must canonicalise inside its roots (a
    // symlinked shard cannot reach outside them). Not owned.
    const UriResolver* resolver = nullptr;
  };

  static absl::StatusOr<std::unique_ptr<Checkpoint>> Open(
      const std::string& path, const Options& options);
  static absl::StatusOr<std::unique_ptr<Checkpoint>> Open(
      const std::string& path) {
    return Open(path, Options());
  }

  const std::vector<TensorInfo>& tensors() const override { return tensors_; }
  absl::StatusOr<at::Tensor> Read(absl::string_view name,
                                  const ReadOptions& options) const override;
  using TensorSource::Read;
  absl::StatusOr<std::string> ReadRaw(absl::string_view name) const override;
  const std::string& description() const override { return path_; }
  // Reads bytes [offset, offset + length) of tensor `name`'s stored data
  // (little-endian, row-major) into `buffer`: one chunk of a tensor streamed
  // piece by piece. NOT_FOUND for an unknown name, INVALID_ARGUMENT for a
  // range outside the tensor.
  absl::Status ReadRawRange(absl::string_view name, uint64_t offset,
                            uint64_t length, void* buffer) const;

  // The directory holding the checkpoint files.
  const std::string& directory() const { return directory_; }
  // True when read through model.safetensors.index.json.
  bool sharded() const { return sharded_; }
  // The safetensors files, sorted by name.
  const std::vector<std::unique_ptr<SafetensorsFile>>& files() const {
    return files_;
  }
  // `metadata.total_size` from the index, when present.
  std::optional<uint64_t> index_total_size() const { return index_total_size_; }
  // Non-fatal observations (e.g. an index total_size that disagrees with the
  // shards), for reports.
  const std::vector<std::string>& warnings() const { return warnings_; }

 private:
  Checkpoint() = default;

  struct Location {
    const SafetensorsFile* file;
    const TensorEntry* entry;
  };
  absl::StatusOr<Location> Locate(absl::string_view name) const;

  std::string path_;
  std::string directory_;
  bool sharded_ = false;
  std::optional<uint64_t> index_total_size_;
  std::vector<std::string> warnings_;
  std::vector<std::unique_ptr<SafetensorsFile>> files_;
  std::vector<TensorInfo> tensors_;  // sorted by name
  std::vector<Location> locations_;  // parallel to tensors_
};

// Opens a single-file safetensors format of the project's own (a calibration
// file, a patch): `path` must be one .safetensors file (not a directory or an
// index) whose `__metadata__` "format" is `format`. Errors are
// INVALID_ARGUMENT "<path>: ..." naming `kind` (e.g. "tailor patch").
absl::StatusOr<std::unique_ptr<Checkpoint>> OpenFormattedFile(
    const std::string& path, const Checkpoint::Options& options,
    absl::string_view kind, absl::string_view format);

}  // namespace tailor

#endif  // TAILOR_IO_CHECKPOINT_H_
