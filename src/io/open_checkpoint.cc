#include "io/open_checkpoint.h"

#include "io/lora_adapter.h"
#include "util/status_macros.h"

namespace tailor {

absl::StatusOr<std::unique_ptr<Checkpoint>> OpenCheckpointUri(
    absl::string_view uri, const UriResolver& resolver) {
  TAILOR_ASSIGN_OR_RETURN(std::string path, resolver.ResolveExisting(uri));
  Checkpoint::Options options;
  options.resolver = &resolver;
  return Checkpoint::Open(path, options);
}

absl::StatusOr<std::unique_ptr<TensorSource>> OpenFineTunedUri(
    absl::string_view uri, const TensorSource& base,
    const UriResolver& resolver) {
  TAILOR_ASSIGN_OR_RETURN(std::string path, resolver.ResolveExisting(uri));
  Checkpoint::Options options;
  options.resolver = &resolver;
  if (IsLoraAdapterDir(path, resolver)) {
    TAILOR_ASSIGN_OR_RETURN(std::unique_ptr<LoraFineTuned> lora,
                            LoraFineTuned::Create(&base, path, options));
    return std::unique_ptr<TensorSource>(std::move(lora));
  }
  TAILOR_ASSIGN_OR_RETURN(std::unique_ptr<Checkpoint> ckpt,
                          Checkpoint::Open(path, options));
  return std::unique_ptr<TensorSource>(std::move(ckpt));
}

}  // namespace tailor
