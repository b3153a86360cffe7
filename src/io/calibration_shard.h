#ifndef TAILOR_IO_CALIBRATION_SHARD_H_
#define TAILOR_IO_CALIBRATION_SHARD_H_

// What a partial calibration file (`tailorctl calibrate --shard I
// --shards N`, issue #20 point 3) records about where it comes from, so
// that `calibrate --merge` can refuse partials of different models or data
// splits, and a missing or duplicated shard. Stored as the __metadata__
// entry "shard" of the tailor-hessian/1 file (calibration_file.h), a JSON
// object:
//   {"index": I, "count": N, "windows": windows of the whole split,
//    "model": sha256 hex of the model's files' header and sampled data
//             fingerprints (io/fingerprint.h), in file order,
//    "data": sha256 hex of the whole split's int64 token windows}
// Files written before this record (and single runs) have no such entry.
// Torch-free.

#include <cstdint>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace tailor {

inline constexpr char kCalibrationShardKey[] = "shard";

struct CalibrationShard {
  int index = 0;
  int count = 0;
  int64_t windows = 0;
  std::string model;
  std::string data;
};

// The __metadata__ value of `shard`.
std::string CalibrationShardJson(const CalibrationShard& shard);

// Parses a __metadata__ "shard" value. INVALID_ARGUMENT naming `label` and
// the rule broken: not a JSON object, a field missing or of the wrong type,
// not 0 <= index < count, windows < count, a fingerprint that is not 64
// hex digits.
absl::StatusOr<CalibrationShard> ParseCalibrationShard(absl::string_view text,
                                                       absl::string_view label);

}  // namespace tailor

#endif  // TAILOR_IO_CALIBRATION_SHARD_H_
