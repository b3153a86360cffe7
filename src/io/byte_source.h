#ifndef TAILOR_IO_BYTE_SOURCE_H_
#define TAILOR_IO_BYTE_SOURCE_H_

// A random-access, read-only sequence of bytes (issue #16 points 2 and 9):
// a local file (a descriptor opened beneath its allowed root) or a remote
// object (storage/remote_byte_source.h). Checkpoint readers, fingerprints
// and copies of non-tensor files read through this, so a local file and an
// s3:// object are read the same way. Torch-free.

#include <cstdint>
#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "util/file_util.h"

namespace tailor {

// Thread-safe: ReadAt() may be called concurrently.
class ByteSource {
 public:
  virtual ~ByteSource() = default;
  // The size fixed when the source was opened (a local file's fstat, a
  // remote object's Stat).
  virtual uint64_t size() const = 0;
  // What messages call it: a local path or a canonical remote URI.
  virtual const std::string& name() const = 0;
  // Reads exactly `length` bytes at `offset` into `out`. A range past size()
  // is INVALID_ARGUMENT; a source that ends early is DATA_LOSS; a remote
  // object that changed since it was opened is FAILED_PRECONDITION.
  virtual absl::Status ReadAt(uint64_t offset, uint64_t length,
                              void* out) const = 0;
};

// A regular file open for reading (e.g. UriResolver::OpenForRead). The size
// is taken now (RegularFileSize); `name` names it in messages.
absl::StatusOr<std::unique_ptr<ByteSource>> NewFileByteSource(std::string name,
                                                              ScopedFd fd);

// Reads a whole source of at most `max_bytes` (larger is INVALID_ARGUMENT
// with the same wording as ReadOpenFileToString).
absl::StatusOr<std::string> ReadWholeSource(const ByteSource& source,
                                            uint64_t max_bytes);

// The INVALID_ARGUMENT for a range that leaves a source of `size` bytes.
absl::Status RangeOutside(absl::string_view name, uint64_t offset,
                          uint64_t length, uint64_t size);

}  // namespace tailor

#endif  // TAILOR_IO_BYTE_SOURCE_H_
