#ifndef TAILOR_MODEL_HESSIAN_COLLECTOR_H_
#define TAILOR_MODEL_HESSIAN_COLLECTOR_H_

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <map>
#include <optional>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "model/llama.h"
#include "storage/uri_resolver.h"

namespace tailor {

// Calibration statistics (src/DESIGN.md §3.3): for every linear layer, the
// Gram matrix of its inputs, H = (2/n) X^T X over the n input rows seen.
//
// Attach it to forward passes (LlamaModel::Forward(tokens, &collector), or
// Calibrate()); each reported input [..., c] adds its rows' X^T X to a
// float32 c x c sum on the input's device -- activations are never stored.
// Layers sharing an input are stored once: k_proj and v_proj alias
// q_proj's Hessian, gate_proj aliases up_proj's (their reports are not
// accumulated; the model reports the same tensor for them).
//
// Errors inside a hook (a weight name not ending in ".weight", an input
// width that changes between passes) are sticky: Write() and status()
// return the first.
//
// Thread-compatible: one forward pass at a time.
class HessianCollector : public ForwardHooks {
 public:
  HessianCollector() = default;

  void OnLinearInput(const std::string& weight_name,
                     const at::Tensor& input) override;

  // Runs `model` on `tokens` [B, T] without autograd and accumulates. Adds
  // B * T rows. INVALID_ARGUMENT for bad tokens; INTERNAL for LibTorch
  // failures.
  absl::Status Calibrate(const LlamaModel& model, const at::Tensor& tokens);

  // Rows accumulated so far (the same for every key after whole forward
  // passes); 0 before any.
  int64_t nsamples() const;

  // The Hessian key ("<stem>.hessian") a weight's statistics are stored
  // under, following the alias rule; nullopt for a name not ending in
  // ".weight".
  static std::optional<std::string> KeyFor(absl::string_view weight_name);

  // H = (2/n) * sum, symmetrised, float32 on the CPU. NOT_FOUND for an
  // unknown key.
  absl::StatusOr<at::Tensor> Hessian(const std::string& key) const;

  // Weight name -> Hessian key, for the aliased weights seen so far.
  const std::map<std::string, std::string>& aliases() const { return aliases_; }

  // The first error a hook met (OK if none).
  const absl::Status& status() const { return status_; }

  // Writes the calibration file (format tailor-hessian/1: one F32 tensor per
  // key, metadata nsamples and aliases) to the single file `path`, which
  // must not exist, through WriteCalibrationFile (io/calibration_file.h):
  // atomic. FAILED_PRECONDITION before any rows, when keys saw different
  // row counts, or when an alias names a key never reported. With
  // `resolver`, `path` came from its ResolveForWrite() and is written
  // beneath its root (WriteCalibrationFile). `extra_metadata` goes into
  // the file's __metadata__ too (a partial file's shard record).
  absl::Status Write(
      const std::string& path, const UriResolver* resolver = nullptr,
      const std::map<std::string, std::string>& extra_metadata = {}) const;

 private:
  struct Accumulator {
    at::Tensor sum;  // float32 [c, c]: sum of x x^T over rows
    int64_t rows = 0;
  };
  void Fail(absl::Status status);

  std::map<std::string, Accumulator> sums_;  // by Hessian key
  std::map<std::string, std::string> aliases_;
  absl::Status status_;
};

}  // namespace tailor

#endif  // TAILOR_MODEL_HESSIAN_COLLECTOR_H_
