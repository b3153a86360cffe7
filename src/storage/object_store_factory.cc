#include "storage/object_store_factory.h"

#include <optional>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "storage/read_cache.h"
#include "storage/remote_store_provider.h"
#include "util/file_util.h"
#include "util/status_macros.h"

namespace tailor {

namespace {

// Creates the libcurl provider on first use, so that a malformed AWS_* or
// HF_* setting fails the runs that name a remote URI (with the error naming
// the variable or file), not every local command.
class LazyRemoteStoreProvider : public ObjectStoreProvider {
 public:
  explicit LazyRemoteStoreProvider(RemoteOptions options)
      : options_(std::move(options)) {}

  absl::StatusOr<std::shared_ptr<ObjectStore>> StoreFor(
      const ObjectUri& uri) override {
    std::shared_ptr<ObjectStoreProvider> provider;
    {
      absl::MutexLock lock(&mu_);
      if (!created_.has_value()) created_ = NewRemoteStoreProvider(options_);
      if (!created_->ok()) return created_->status();
      provider = **created_;
    }
    return provider->StoreFor(uri);
  }

 private:
  const RemoteOptions options_;
  absl::Mutex mu_;
  // Unset until the first StoreFor(); then the provider or why none.
  std::optional<absl::StatusOr<std::shared_ptr<ObjectStoreProvider>>> created_
      ABSL_GUARDED_BY(mu_);
};

}  // namespace

absl::StatusOr<std::shared_ptr<ObjectStoreProvider>> MakeObjectStoreProvider(
    const RemoteOptions& options) {
  return std::make_shared<LazyRemoteStoreProvider>(options);
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
