#ifndef TAILOR_STORAGE_OBJECT_STORE_FACTORY_H_
#define TAILOR_STORAGE_OBJECT_STORE_FACTORY_H_

// The one place tailord's and tailorctl's main() get their
// ObjectStoreProvider (issue #16), and the remote-storage half of their
// resolver built from the shared flags (--ca-file, --cache-dir,
// --cache-bytes, scratch directory). Torch-free.

#include <cstdint>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "storage/remote_store_provider.h"
#include "storage/uri_resolver.h"

namespace tailor {

// The provider serving s3://, https:// and hf:// URIs
// (storage/remote_store_provider.h). It reads its configuration (the AWS_*
// and HF_* environment, the shared AWS files) when a remote URI is first
// used, so a malformed setting fails only the runs that name one. A null
// provider given to UriResolver (tests) makes remote URIs UNIMPLEMENTED
// "remote storage not configured".
absl::StatusOr<std::shared_ptr<ObjectStoreProvider>> MakeObjectStoreProvider(
    const RemoteOptions& options);

// The remote-storage flags of tailord and tailorctl.
struct RemoteStorageFlags {
  std::string ca_file;    // --ca-file
  std::string cache_dir;  // --cache-dir (empty: no read cache)
  uint64_t cache_bytes = kDefaultCacheBytes;  // --cache-bytes
  std::string scratch_dir;                    // where remote outputs are staged

  static constexpr uint64_t kDefaultCacheBytes = 64ull << 30;
};

// The provider (MakeObjectStoreProvider), the read cache (when cache_dir is
// set) and the scratch directory, for UriResolver::Create. Errors name the
// flag.
absl::StatusOr<UriResolver::Remote> MakeRemoteAccess(
    const RemoteStorageFlags& flags);

}  // namespace tailor

#endif  // TAILOR_STORAGE_OBJECT_STORE_FACTORY_H_
