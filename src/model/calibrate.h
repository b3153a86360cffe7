#ifndef TAILOR_MODEL_CALIBRATE_H_
#define TAILOR_MODEL_CALIBRATE_H_

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <functional>
#include <map>
#include <string>

#include "absl/status/statusor.h"
#include "model/llama.h"
#include "storage/uri_resolver.h"

namespace tailor {

// Calibration windows from a data file:
// - `*.safetensors`: exactly one integer tensor (any name; `input_ids` by
//   convention), either a 1-D token stream or 2-D [sequences, tokens]. Use
//   this for any real tokenizer (tokenize in Python, save with safetensors).
// - any other file: its raw bytes, one token per byte (the byte-level
//   vocabulary of the demo models; demo/byte_corpus.h).
// From a stream, `samples` windows of `seq_len` tokens at evenly spaced
// offsets from the start to the end (deterministic, overlapping only when
// the stream is short); from 2-D data, the first `samples` rows cut to
// `seq_len`. Returns int64 [samples, seq_len]. INVALID_ARGUMENT naming the
// file and the rule when the data is too short, not integer, or ambiguous.
// With `resolver` (not owned), `path` must canonicalise inside one of its
// allowed roots and is opened beneath that root (issue #14 point 7): a file
// symlinked outside the roots, or swapped for such a symlink after it was
// resolved, is PERMISSION_DENIED naming it.
absl::StatusOr<at::Tensor> LoadCalibrationTokens(
    const std::string& path, int64_t samples, int64_t seq_len,
    const UriResolver* resolver = nullptr);

// Evenly spaced windows of a 1-D stream (see above). REQUIRES: 1 <= seq_len
// <= stream.numel(), samples >= 1.
at::Tensor EvenlySpacedWindows(const at::Tensor& stream, int64_t samples,
                               int64_t seq_len);

struct CalibrateOptions {
  int64_t batch_size = 8;  // windows per forward pass
  // Called after each forward pass with (windows done, total); optional.
  std::function<void(int64_t done, int64_t total)> on_progress;
  // When set, the output path came from this resolver's ResolveForWrite()
  // and is written beneath its root (WriteCalibrationFile). Not owned.
  const UriResolver* resolver = nullptr;
  // Extra __metadata__ of the file (RunCalibrateJob: a partial file's
  // shard record, io/calibration_shard.h).
  std::map<std::string, std::string> metadata;
};

// Runs `model` on `tokens` [n, T] (no autograd) and writes the calibration
// file (src/DESIGN.md §3.3, tailor-hessian/1, with the q/k/v and gate/up
// aliases) to `out_path`, atomically; out_path must not exist.
absl::Status WriteCalibration(const LlamaModel& model, const at::Tensor& tokens,
                              const std::string& out_path,
                              const CalibrateOptions& options = {});

// `tailorctl calibrate`: loads the LLaMA checkpoint at `model_uri` (its
// config.json and weights) on `device` in float32, reads calibration tokens
// from `data_uri`, checks every id is below the model's vocab_size, and
// writes the calibration file to `out_uri`. Every file is opened (and the
// output written) beneath the allowed root of `resolver` that holds it
// (issue #14 point 7): a symlink leading outside the roots, even one
// swapped in after the URIs were resolved, is PERMISSION_DENIED (or, for
// the output's directory, FAILED_PRECONDITION) naming the path.
struct CalibrateJob {
  std::string model_uri;
  std::string data_uri;
  std::string out_uri;
  int64_t samples = 128;
  int64_t seq_len = 512;
  std::string device = "auto";  // cpu | cuda | cuda:N | auto
  // With shard_count > 0: only windows ShardWindows(shard_index,
  // shard_count) of the `samples` (calibration_merge.h), written as a
  // partial file with their own nsamples; merge the parts with
  // MergeCalibrationFiles.
  int shard_index = 0, shard_count = 0;
  CalibrateOptions options;
};
absl::Status RunCalibrateJob(const CalibrateJob& job,
                             const UriResolver& resolver);

}  // namespace tailor

#endif  // TAILOR_MODEL_CALIBRATE_H_
