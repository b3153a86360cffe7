#ifndef TAILOR_FUSION_CALIBRATION_H_
#define TAILOR_FUSION_CALIBRATION_H_

#include <ATen/core/Tensor.h>

#include <map>
#include <memory>
#include <optional>
#include <string>

#include "absl/status/statusor.h"
#include "io/checkpoint.h"

namespace tailor {

inline constexpr char kHessianFormat[] = "tailor-hessian/1";

// A calibration file (DESIGN section 3): one safetensors file, one float32
// c x c tensor per linear weight keyed by the weight name with ".weight"
// replaced by ".hessian", holding H = (2/n) X^T X. `__metadata__`: format =
// tailor-hessian/1, nsamples = n (decimal, > 0), optional aliases = JSON
// object {weight name: hessian key} for weights sharing an input.
//
// Open() checks the metadata and every header entry (F32, 2-D, square, key
// ends with ".hessian", aliases name existing keys and weight names ending in
// ".weight"); Load() reads one matrix and checks it is finite and symmetric
// (|H - H^T| <= 1e-4 * max|H| elementwise). Errors are INVALID_ARGUMENT
// naming the file, the key and the rule.
//
// Thread-safe after Open().
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

 private:
  CalibrationFile() = default;
  std::unique_ptr<Checkpoint> file_;
  int64_t nsamples_ = 0;
  std::map<std::string, std::string> aliases_;
};

}  // namespace tailor

#endif  // TAILOR_FUSION_CALIBRATION_H_
