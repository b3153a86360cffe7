#include "storage/object_store_factory.h"

#include <utility>

#include "absl/strings/str_cat.h"
#include "storage/read_cache.h"
#include "util/file_util.h"
#include "util/status_macros.h"

namespace tailor {

absl::StatusOr<std::shared_ptr<ObjectStoreProvider>> MakeObjectStoreProvider(
    const RemoteOptions& options) {
  // MERGE (issue #16 part A): replace this body with
  //   return NewRemoteStoreProvider(options);
  // (storage/remote_store_provider.h, the libcurl transport) and link its
  // library into tailor_storage_factory. Until then no remote backend.
  (void)options;
  return std::shared_ptr<ObjectStoreProvider>();
}

absl::StatusOr<UriResolver::Remote> MakeRemoteAccess(
    const RemoteStorageFlags& flags) {
  RemoteOptions options;
  options.ca_file = flags.ca_file;
  if (!flags.ca_file.empty() && !IsRegularFile(flags.ca_file)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "--ca-file ", flags.ca_file, " is not a readable regular file"));
  }
  UriResolver::Remote remote;
  TAILOR_ASSIGN_OR_RETURN(remote.provider, MakeObjectStoreProvider(options));
  if (!flags.cache_dir.empty()) {
    TAILOR_ASSIGN_OR_RETURN(
        remote.cache, ReadCache::Open(flags.cache_dir, flags.cache_bytes));
  }
  remote.scratch_dir = flags.scratch_dir;
  return remote;
}

}  // namespace tailor
