#ifndef TAILOR_IO_FINGERPRINT_H_
#define TAILOR_IO_FINGERPRINT_H_

// Cheap fingerprints of a safetensors file, which a patch records for each
// file of its base (src/DESIGN.md §3.2) and checks before it is applied.
// Torch-free.

#include <cstdint>
#include <string>

#include "absl/status/statusor.h"

namespace tailor {

class SafetensorsFile;
class UriResolver;

// sha256 (hex) of a safetensors file's header bytes (the 8-byte length and
// the JSON): a cheap fingerprint of a checkpoint's layout and identity.
// ABORTED when the file changes while it is read.
absl::StatusOr<std::string> HeaderFingerprint(const std::string& path);
// The same opened beneath its allowed root (issue #14 point 7).
absl::StatusOr<std::string> HeaderFingerprint(const std::string& path,
                                              const UriResolver& resolver);
// The same for a file already open (no second open of its path).
absl::StatusOr<std::string> HeaderFingerprint(const SafetensorsFile& file);

// Blocks DataFingerprint() samples from a file's data section, and their size.
inline constexpr int kDataSampleBlocks = 64;
inline constexpr uint64_t kDataSampleBlockBytes = 4096;

// sha256 (hex) of kDataSampleBlocks blocks of kDataSampleBlockBytes from a
// safetensors file's data section, evenly spaced from its first byte to its
// last (the whole data section when it is smaller), each preceded by its
// offset: a cheap fingerprint of the values, so that a patch is refused on
// another base of the same layout (e.g. a fine-tune of it). Values that
// differ only outside the sampled blocks are not detected.
absl::StatusOr<std::string> DataFingerprint(const std::string& path);
absl::StatusOr<std::string> DataFingerprint(const SafetensorsFile& file);

}  // namespace tailor

#endif  // TAILOR_IO_FINGERPRINT_H_
