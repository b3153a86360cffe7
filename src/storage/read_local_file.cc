#include "storage/read_local_file.h"

#include "util/file_util.h"
#include "util/status_macros.h"

namespace tailor {

absl::StatusOr<std::string> ReadLocalFile(const UriResolver* resolver,
                                          const std::string& path,
                                          uint64_t max_bytes) {
  if (resolver == nullptr) return ReadFileToString(path, max_bytes);
  TAILOR_ASSIGN_OR_RETURN(const std::string canonical,
                          resolver->CheckLocalPath(path));
  return resolver->ReadFile(canonical, max_bytes, path);
}

}  // namespace tailor
