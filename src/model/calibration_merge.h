#ifndef TAILOR_MODEL_CALIBRATION_MERGE_H_
#define TAILOR_MODEL_CALIBRATION_MERGE_H_

// Calibration sharded by data (issue #20 point 3): `tailorctl calibrate
// --shard I --shards N` calibrates on share I of the token windows
// (ShardWindows) and writes a partial tailor-hessian/1 file with its own
// nsamples; `tailorctl calibrate --merge OUT PART...` combines the partial
// files into the file a single run over all the windows writes.

#include <ATen/core/Tensor.h>

#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "io/calibration_shard.h"
#include "io/checkpoint.h"
#include "storage/uri_resolver.h"

namespace tailor {

// Windows [floor(I n / N), floor((I + 1) n / N)) of `tokens` [n, T]: the
// shards' windows partition the single run's, in order. REQUIRES
// 0 <= index < count. May be empty (n < count).
at::Tensor ShardWindows(const at::Tensor& tokens, int index, int count);

// The record (io/calibration_shard.h) of share `index` of `count` of the
// windows `tokens` [n, T] (the whole split) calibrated on `model`: the
// model's content fingerprint, the windows' and their number.
absl::StatusOr<CalibrationShard> CalibrationShardRecord(
    const Checkpoint& model, const at::Tensor& tokens, int index, int count);

// Writes to `out_path` (which must not exist; written atomically) the
// calibration file whose every Hessian is
//   H = sum_i n_i H_i / sum_i n_i,
// the partial files' H_i = (2/n_i) X_i^T X_i weighted by their nsamples n_i,
// i.e. (2/n) X^T X over all their rows; summed in float64, stored float32.
// Against a single run over the same windows (float32 accumulation in
// batches) every element agrees within 1e-5 * max|H| of its matrix plus
// float32 rounding (calibrate_shard_test checks 1e-5 relative). The parts
// must agree on the keys, shapes and aliases (FAILED_PRECONDITION naming the
// file and the key otherwise). Partial files record their model and data
// split (CalibrationFile::shard()): the parts must all be shards of one
// split of the same windows of the same model (FAILED_PRECONDITION naming
// the file and what differs), no shard may be given twice (ALREADY_EXISTS
// naming both files) and none may be missing (NOT_FOUND naming it). Parts
// written before the record existed are still merged when none of the parts
// has one (then another model of the same architecture, or a missing
// shard, cannot be detected); mixing the two is FAILED_PRECONDITION.
// Paths are resolved by the caller; with `resolver` the output is written
// beneath its root (WriteCalibrationFile).
absl::Status MergeCalibrationFiles(const std::vector<std::string>& parts,
                                   const std::string& out_path,
                                   const UriResolver* resolver = nullptr);

}  // namespace tailor

#endif  // TAILOR_MODEL_CALIBRATION_MERGE_H_
