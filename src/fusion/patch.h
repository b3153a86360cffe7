#ifndef TAILOR_FUSION_PATCH_H_
#define TAILOR_FUSION_PATCH_H_

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "fusion/merge_methods.h"  // TaskDelta, FuseTensor, KeptValues
#include "io/checkpoint.h"
#include "io/dtype.h"
#include "io/fingerprint.h"  // HeaderFingerprint, DataFingerprint
#include "nlohmann/json.hpp"
#include "util/file_util.h"
#include "util/staged_output.h"

namespace tailor {

inline constexpr char kPatchFormat[] = "tailor-patch/1";

// Patch file (src/DESIGN.md §3.2): a safetensors file any reader opens. Per
// patched weight W (shape S, n entries, k kept):
//   "<W>.mask"   U8  [ceil(n / 8)]  bit i of row-major flat index i is byte
//                                   i / 8, bit i % 8 (LSB first, numpy
//                                   packbits(bitorder="little")); pad bits 0
//   "<W>.values" F32 [k]            the kept delta D at set bits, row-major
// `__metadata__` (all strings): format = tailor-patch/1; method; knobs (JSON
// object); sources (JSON array of {role, label, content fingerprints: per
// file the sha256 of the safetensors header bytes, for the base also the
// sampled data blocks}); tensors (JSON object {W: {shape, dtype (of the
// base), kept, stats}}). Nothing in it names where the inputs were (issue
// #17 point 3): the same inputs and knobs give the same bytes from any
// path or machine; the job's report has the URIs. Patches written before
// that also carry each source's `uri`; readers ignore it.
//
// The fused tensor is FuseTensor(pre, mask, values) (merge_methods.h): fuse
// and apply-patch both go through it, so applying a patch reproduces the
// fused checkpoint bit for bit. The mask's packing is io/bit_packing.h; the
// sources' fingerprints are io/fingerprint.h. PatchWriter is in
// patch_writer.cc, PatchFile in patch.cc.

struct PatchMetadata {
  std::string method;
  nlohmann::json knobs = nlohmann::json::object();
  nlohmann::json sources = nlohmann::json::array();
};

// The bytes a patch stores for one weight, as PatchWriter spools them: what
// a job journal records so that a resumed job adds exactly the same entry.
struct PackedPatchEntry {
  std::vector<int64_t> shape;  // of the weight
  std::string mask;            // U8 [ceil(n / 8)], packed as described above
  std::string values;          // F32 [k] (host byte order), k = popcount
};

// Writes a patch whose tensors arrive one at a time with sizes unknown up
// front: data is spooled to a hidden file beside `path`
// (".<name>.tailor-spool-<pid>-<k>"); Finish() writes header + data to a
// staged file (a StagedOutput, through the parent directory's descriptor
// opened at Create() without following symlinks), fsyncs and renames it to
// `path` (then fsyncs the directory). Without Finish() nothing appears under
// `path`. Deterministic: same Add() sequence, same bytes.
// Stage() + staged() let a caller publish several outputs as one unit
// (PublishAll); Finish() is Stage() and publishing this one alone.
// Not thread-safe.
class PatchWriter {
 public:
  // An existing `path` is ALREADY_EXISTS unless `overwrite`; a directory
  // there is INVALID_ARGUMENT. A remote `path` (issue #16) is staged in
  // `resolver`'s scratch directory and uploaded at publish
  // (StagedOutput::CreateRemote); `resolver` (not owned) is needed then.
  static absl::StatusOr<std::unique_ptr<PatchWriter>> Create(
      const std::string& path, bool overwrite = true,
      const UriResolver* resolver = nullptr);
  ~PatchWriter();

  // Adds weight `name` (shape of mask): bit-packs mask, stores values =
  // KeptValues(mask, delta). `stats` goes into the tensors metadata.
  absl::Status Add(const std::string& name, const at::Tensor& mask,
                   const at::Tensor& delta, DType base_dtype,
                   const nlohmann::json& stats);
  // Add() in two steps: Pack() computes the stored bytes of (mask, delta);
  // AddPacked() appends them. Add(n, m, d, t, s) is AddPacked(n, Pack(m, d),
  // t, s), byte for byte. AddPacked checks the sizes (mask bytes for the
  // shape, whole float values) but not the popcount.
  static absl::StatusOr<PackedPatchEntry> Pack(const at::Tensor& mask,
                                               const at::Tensor& delta,
                                               absl::string_view label);
  absl::Status AddPacked(const std::string& name, const PackedPatchEntry& entry,
                         DType base_dtype, const nlohmann::json& stats);
  absl::Status Finish(const PatchMetadata& metadata);
  // Writes and fsyncs the staged file; publish staged() afterwards.
  absl::Status Stage(const PatchMetadata& metadata);
  StagedOutput* staged() const { return staged_.get(); }
  // The canonical output path (parent canonicalised at Create()).
  const std::string& path() const { return path_; }
  // After Stage(): the patch file's size and SHA-256 (hex).
  uint64_t size() const { return size_; }
  const std::string& sha256() const { return sha256_; }

 private:
  PatchWriter() = default;
  void RemoveSpool();
  struct Entry;
  std::unique_ptr<StagedOutput> staged_;
  std::string path_;
  std::string spool_name_, spool_path_;
  uint64_t size_ = 0;
  std::string sha256_;
  ScopedFd spool_;
  uint64_t spool_size_ = 0;
  std::vector<std::unique_ptr<Entry>> entries_;
  nlohmann::json tensors_ = nlohmann::json::object();
  bool finished_ = false;
};

// A validated patch file. Open() checks the format tag, that every weight
// has both .mask and .values with consistent sizes (mask bytes =
// ceil(n / 8) for the recorded shape), the metadata JSON; Load() checks
// the popcount equals the values count and the pad bits are zero.
// Thread-safe after Open().
class PatchFile {
 public:
  struct TensorEntry {
    std::string name;
    std::vector<int64_t> shape;
    DType base_dtype = DType::kF32;
    int64_t kept = 0;
  };

  static absl::StatusOr<std::unique_ptr<PatchFile>> Open(
      const std::string& path, const Checkpoint::Options& options);

  const std::vector<TensorEntry>& tensors() const { return tensors_; }
  const TensorEntry* Find(absl::string_view name) const;
  // Mask (bool, shape) and dense float32 delta (zero outside the mask).
  absl::StatusOr<TaskDelta> Load(absl::string_view name) const;
  // The values as stored (float32 [k]) with the mask.
  absl::StatusOr<std::pair<at::Tensor, at::Tensor>> LoadPacked(
      absl::string_view name) const;
  // Unvalidated ranges of weight `name`'s stored tensors, for readers that
  // decode an entry piece by piece (PatchEntryStream, patch_stream.h):
  // bytes [offset, offset + length) of the packed mask, and kept values
  // [first, first + count) (float32, as stored). NOT_FOUND for an unknown
  // weight; OUT_OF_RANGE past the stored tensor.
  absl::Status ReadMaskBytes(absl::string_view name, uint64_t offset,
                             uint64_t length, void* buffer) const;
  absl::Status ReadValues(absl::string_view name, int64_t first, int64_t count,
                          float* buffer) const;

  const std::string& method() const { return method_; }
  const nlohmann::json& knobs() const { return knobs_; }
  const nlohmann::json& sources() const { return sources_; }
  const nlohmann::json& tensor_metadata() const { return tensor_metadata_; }
  const std::string& path() const { return file_->description(); }

 private:
  PatchFile() = default;
  std::unique_ptr<Checkpoint> file_;
  std::vector<TensorEntry> tensors_;  // sorted by name
  std::string method_;
  nlohmann::json knobs_, sources_, tensor_metadata_;
};

}  // namespace tailor

#endif  // TAILOR_FUSION_PATCH_H_
