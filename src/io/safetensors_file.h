#ifndef TAILOR_IO_SAFETENSORS_FILE_H_
#define TAILOR_IO_SAFETENSORS_FILE_H_

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "io/byte_source.h"
#include "io/safetensors_header.h"
#include "util/file_util.h"

namespace tailor {

// One validated safetensors file. Open() reads only the 8-byte prefix and the
// header, validates both completely (see safetensors_header.h) against the
// source's size, and keeps the source open; tensor bytes are read on demand
// (pread, or a ranged GET for a remote object: io/byte_source.h), so nothing
// larger than the header is held.
//
// Thread-safe: const methods may be called concurrently.
class SafetensorsFile {
 public:
  static absl::StatusOr<std::unique_ptr<SafetensorsFile>> Open(
      const std::string& path);
  // The same for `path` already open (e.g. beneath its allowed root:
  // UriResolver::OpenForRead).
  static absl::StatusOr<std::unique_ptr<SafetensorsFile>> Open(
      const std::string& path, ScopedFd fd);
  // The same for any byte source (a remote object); path() is `path`, or the
  // source's name() when `path` is empty.
  static absl::StatusOr<std::unique_ptr<SafetensorsFile>> Open(
      std::unique_ptr<ByteSource> source, const std::string& path = "");

  // The bytes (for callers that hash or copy the file).
  const ByteSource& source() const { return *source_; }

  const std::string& path() const { return path_; }
  uint64_t file_size() const { return file_size_; }
  const SafetensorsHeader& header() const { return header_; }

  // Reads the raw (little-endian) bytes of `entry`, which must come from
  // header(), into `buffer` of entry.nbytes() bytes.
  absl::Status ReadRaw(const TensorEntry& entry, void* buffer) const;
  // Reads bytes [offset, offset + length) of `entry`'s data into `buffer`
  // (a chunk of a tensor; safetensors data is contiguous, row-major).
  // INVALID_ARGUMENT if the range leaves the tensor.
  absl::Status ReadRawRange(const TensorEntry& entry, uint64_t offset,
                            uint64_t length, void* buffer) const;

 private:
  SafetensorsFile(std::string path, std::unique_ptr<ByteSource> source,
                  uint64_t file_size, SafetensorsHeader header)
      : path_(std::move(path)),
        source_(std::move(source)),
        file_size_(file_size),
        header_(std::move(header)) {}

  const std::string path_;
  const std::unique_ptr<const ByteSource> source_;
  const uint64_t file_size_;
  const SafetensorsHeader header_;
};

// If `prefix` (the first bytes of a file) looks like a pickle stream or a
// PyTorch zip archive, returns the INVALID_ARGUMENT error explaining why such
// files are refused; OK otherwise.
absl::Status RefuseIfPickle(absl::string_view prefix, absl::string_view label);

// The refusal for a path whose name says pickle (.bin, .pt, .pth, .ckpt,
// .pkl, .pickle); OK for any other name.
absl::Status RefuseIfPickleName(absl::string_view path);

}  // namespace tailor

#endif  // TAILOR_IO_SAFETENSORS_FILE_H_
