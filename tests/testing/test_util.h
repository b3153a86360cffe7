#ifndef TAILOR_TESTS_TESTING_TEST_UTIL_H_
#define TAILOR_TESTS_TESTING_TEST_UTIL_H_

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "absl/strings/string_view.h"
#include "nlohmann/json.hpp"
#include "testing/temp_dir.h"

namespace tailor::testing {

// A tensor as bytes, for building files independently of the project's
// writer (so reader tests do not trust the code under test).
struct RawTensor {
  std::string name;
  std::string dtype;  // header spelling, e.g. "BF16"
  std::vector<int64_t> shape;
  std::string data;
};

// `tensor` (any LibTorch dtype with a safetensors name) as a RawTensor.
RawTensor ToRaw(const std::string& name, const at::Tensor& tensor);

// A well-formed safetensors file: tensors laid out in the given order.
std::string SerializeSafetensors(
    const std::vector<RawTensor>& tensors,
    const std::map<std::string, std::string>& metadata = {});

// 8-byte little-endian length of `header`, `header`, then `data`.
std::string AssembleSafetensors(absl::string_view header,
                                absl::string_view data);

void WriteFileOrDie(const std::string& path, absl::string_view bytes);
std::string ReadFileOrDie(const std::string& path);

// Writes shards "model-0000i-of-0000n.safetensors" and
// model.safetensors.index.json into `dir` (a single shard is still indexed).
void WriteShardedCheckpoint(const std::string& dir,
                            const std::vector<std::vector<RawTensor>>& shards);

// The outcome of running the tailorctl binary.
struct CliResult {
  int code;  // exit status, -1 if it did not exit normally
  std::string out;
  std::string err;
};

// Runs $TAILORCTL (set by CTest) with `args`, each shell-quoted, capturing
// stdout and stderr through files in `scratch_dir`.
CliResult RunTailorctl(const std::vector<std::string>& args,
                       const std::string& scratch_dir);

// Bit-exact tensor equality (same dtype, shape and bytes; NaN payloads too).
bool BitEqual(const at::Tensor& a, const at::Tensor& b);

// Expects directories `a` and `b` to hold the same file names with the same
// bytes (a gtest failure per difference).
void ExpectSameFiles(const std::string& a, const std::string& b);

// A fusion job's report without what may differ between two runs of the
// same job (interrupted or not, any worker count): timings ("seconds"), the
// resumed count and the devices, at every level.
nlohmann::json WithoutRunFacts(nlohmann::json report);

// Writes `tensors` in BF16 as a two-shard checkpoint in `dir` (which must
// exist): the "mlp" tensors in the second shard with an I64
// "model.position_ids" [8], the others in the first.
void WriteBf16TwoShardCheckpoint(
    const std::string& dir, const std::map<std::string, at::Tensor>& tensors);

}  // namespace tailor::testing

#endif  // TAILOR_TESTS_TESTING_TEST_UTIL_H_
