#ifndef TAILOR_IO_SAFETENSORS_HEADER_H_
#define TAILOR_IO_SAFETENSORS_HEADER_H_

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "io/dtype.h"

namespace tailor {

// A safetensors file is: 8-byte little-endian header length N, N bytes of
// UTF-8 JSON (the header), then the data section. This file parses and fully
// validates the header; it never touches tensor data and needs no LibTorch.

// Largest header accepted (the reference implementation's limit).
inline constexpr uint64_t kMaxSafetensorsHeaderSize = 100'000'000;
// Largest tensor rank accepted (bounds memory per header entry).
inline constexpr size_t kMaxTensorRank = 64;
// Most `__metadata__` entries accepted (bounds memory per header byte; real
// files carry a handful).
inline constexpr size_t kMaxMetadataEntries = 1024;
// Longest tensor name (real names are under 200 bytes; a longer one is
// refused when the header is read, so later work is bounded by it).
inline constexpr size_t kMaxTensorNameBytes = 65536;

struct TensorEntry {
  std::string name;
  DType dtype = DType::kF32;
  std::vector<int64_t> shape;
  int64_t numel = 0;
  // Byte range inside the data section: [begin, end).
  uint64_t begin = 0;
  uint64_t end = 0;

  uint64_t nbytes() const { return end - begin; }
};

struct SafetensorsHeader {
  uint64_t header_size = 0;  // N: JSON bytes including trailing padding
  uint64_t data_size = 0;    // bytes after the header
  bool has_metadata = false;
  std::map<std::string, std::string> metadata;  // "__metadata__"
  std::vector<TensorEntry> tensors;             // sorted by name

  // Absolute file offset of the data section.
  uint64_t data_offset() const { return 8 + header_size; }
  // Binary search by name; nullptr if absent.
  const TensorEntry* Find(absl::string_view name) const;
};

// Validates the 8-byte length prefix against the file size and returns N.
// Errors (INVALID_ARGUMENT) name `label` and the rule: file shorter than 8
// bytes, N > kMaxSafetensorsHeaderSize, N > file_size - 8.
absl::StatusOr<uint64_t> ParseSafetensorsHeaderLength(absl::string_view prefix,
                                                      uint64_t file_size,
                                                      absl::string_view label);

// Parses and validates the JSON header text (exactly N bytes) for a file
// whose data section holds `data_size` bytes. Rules, each with its own
// INVALID_ARGUMENT message naming `label`, the tensor and the rule: valid
// UTF-8; begins with '{'; only space (0x20) padding after the object; a JSON
// object without duplicate keys; "__metadata__" (optional) maps strings to
// strings; every other key is a tensor object with exactly "dtype" (a known
// dtype), "shape" (array of at most kMaxTensorRank non-negative integers) and
// "data_offsets" ([begin, end], begin <= end); numel x itemsize, computed with
// overflow checks, equals end - begin; the ranges, sorted, start at 0, are
// contiguous, do not overlap, stay within the data section and cover it
// exactly.
absl::StatusOr<SafetensorsHeader> ParseSafetensorsHeaderJson(
    absl::string_view json, uint64_t data_size, absl::string_view label);

// The head of a safetensors file: the 8-byte little-endian length, then the
// JSON header with `__metadata__` first (when non-empty) and `tensors` in the
// order given (their data_offsets as set), space-padded to a multiple of 8 so
// the data section starts aligned. Deterministic.
std::string SerializeSafetensorsHead(
    const std::map<std::string, std::string>& metadata,
    const std::vector<TensorEntry>& tensors);

// Both steps on a whole file held in memory (tests and the fuzzer).
absl::StatusOr<SafetensorsHeader> ParseSafetensorsBytes(
    absl::string_view bytes, absl::string_view label);

}  // namespace tailor

#endif  // TAILOR_IO_SAFETENSORS_HEADER_H_
