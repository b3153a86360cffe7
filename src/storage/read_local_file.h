#ifndef TAILOR_STORAGE_READ_LOCAL_FILE_H_
#define TAILOR_STORAGE_READ_LOCAL_FILE_H_

// Reading a small local file (an index, a config, a text corpus) through
// the job's UriResolver when there is one. Torch-free (tailor_base).

#include <cstdint>
#include <string>

#include "absl/status/statusor.h"
#include "storage/uri_resolver.h"

namespace tailor {

// Reads local file `path` (named inside a checkpoint or by a job), at most
// `max_bytes`, naming `path` in messages: with a `resolver` (may be null)
// beneath its allowed root (CheckLocalPath, then ReadFile: issue #14 point
// 7), else as ReadFileToString() in util/file_util.h.
absl::StatusOr<std::string> ReadLocalFile(const UriResolver* resolver,
                                          const std::string& path,
                                          uint64_t max_bytes);

}  // namespace tailor

#endif  // TAILOR_STORAGE_READ_LOCAL_FILE_H_
