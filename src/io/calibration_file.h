#ifndef TAILOR_IO_CALIBRATION_FILE_H_
#define TAILOR_IO_CALIBRATION_FILE_H_

// The calibration file format, tailor-hessian/1: its reader and its writer.

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "io/calibration_shard.h"
#include "io/checkpoint.h"

namespace tailor {

inline constexpr char kHessianFormat[] = "tailor-hessian/1";

// A calibration file (src/DESIGN.md §3.3): one safetensors file, one float32
// c x c tensor per linear weight keyed by the weight name with ".weight"
// replaced by ".hessian", holding H = (2/n) X^T X. `__metadata__`: format =
// tailor-hessian/1, nsamples = n (decimal, > 0), optional aliases = JSON
// object {weight name: hessian key} for weights sharing an input, optional
// shard = the record of a partial file (calibration_shard.h).
//
// Open() checks the metadata and every header entry (F32, 2-D, square, key
// ends with ".hessian", aliases name existing keys and weight names ending in
// ".weight"); Load() reads one matrix and checks it is finite and symmetric
// (|H - H^T| <= 1e-4 * max|H| elementwise). Errors are INVALID_ARGUMENT
// naming the file, the key and the rule.
//
// Thread-safe after Open(). WriteCalibrationFile (below) writes one.
class CalibrationFile {
 public:
  static absl::StatusOr<std::unique_ptr<CalibrationFile>> Open(
      const std::string& path, const Checkpoint::Options& options);

  // The Hessian key for a weight name (alias, else "<stem>.hessian" when
  // present), or nullopt when the weight has no calibration.
  std::optional<std::string> KeyFor(absl::string_view weight_name) const;

  // Reads and validates one Hessian (float32, CPU).
  absl::StatusOr<at::Tensor> Load(absl::string_view key) const;

  int64_t nsamples() const { return nsamples_; }
  const std::string& path() const { return file_->description(); }
  const std::map<std::string, std::string>& aliases() const { return aliases_; }
  // A partial file's record of its model and data split; nullopt for a
  // full file or a partial one written before the record existed.
  const std::optional<CalibrationShard>& shard() const { return shard_; }
  // The Hessians' header entries (keys, shapes), in file order.
  const std::vector<TensorInfo>& entries() const { return file_->tensors(); }

 private:
  CalibrationFile() = default;
  std::unique_ptr<Checkpoint> file_;
  int64_t nsamples_ = 0;
  std::map<std::string, std::string> aliases_;
  std::optional<CalibrationShard> shard_;
};

// The Hessian key of a weight without an alias: the name with ".weight"
// replaced by ".hessian"; nullopt for a name not ending in ".weight".
std::optional<std::string> HessianKeyOf(absl::string_view weight_name);

// Writes a calibration file to the single file `path`, which must not exist
// (ALREADY_EXISTS): one F32 c x c tensor per entry {key: c} of `columns`,
// `hessian(key)` giving its values (float32 c x c, read one at a time),
// metadata format, nsamples (decimal) and aliases (a JSON object, "{}" when
// empty), plus `extra_metadata` (e.g. the shard record). Atomic: written in a
// hidden staging directory beside `path`
// (".<name>.tailor-stage-<pid>-<k>", a CheckpointWriter's, created through
// the parent directory's descriptor, opened without following symlinks),
// then renamed to `path` relative to that descriptor without replacing
// anything, and the directory fsynced; the staging is removed either way.
// The caller checks the contents (nsamples > 0, aliases naming keys of
// `columns`).
//
// With `resolver` (not owned), `path` is what its ResolveForWrite()
// returned (canonical, inside an allowed root), and the file is written
// beneath that root (issue #14 point 7): if a component of its directory
// has been swapped for a symbolic link since, nothing is written and the
// error names `path` (PERMISSION_DENIED when it now leads outside the
// roots, FAILED_PRECONDITION otherwise).
//
// A remote `path` (s3://, issue #16; `resolver` required, with its store and
// scratch directory) is written locally in the scratch directory, then
// uploaded and committed as one object, visible only once complete; an
// existing object is ALREADY_EXISTS (checked before writing and again
// before committing).
absl::Status WriteCalibrationFile(
    const std::string& path, int64_t nsamples,
    const std::map<std::string, int64_t>& columns,
    const std::map<std::string, std::string>& aliases,
    const std::function<absl::StatusOr<at::Tensor>(const std::string& key)>&
        hessian,
    const UriResolver* resolver = nullptr,
    const std::map<std::string, std::string>& extra_metadata = {});

}  // namespace tailor

#endif  // TAILOR_IO_CALIBRATION_FILE_H_
