#ifndef TAILOR_IO_OPEN_CHECKPOINT_H_
#define TAILOR_IO_OPEN_CHECKPOINT_H_

#include <memory>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "io/checkpoint.h"
#include "io/tensor_source.h"
#include "storage/uri_resolver.h"

namespace tailor {

// The entry points for user-supplied locations: resolve the URI through
// `resolver` (allowed roots, schemes) and open what it names, with every
// file the checkpoint references checked against the same roots.

// A full safetensors checkpoint (directory, index file or .safetensors
// file). A PEFT adapter directory is refused here: it needs a base.
absl::StatusOr<std::unique_ptr<Checkpoint>> OpenCheckpointUri(
    absl::string_view uri, const UriResolver& resolver);

// A fine-tuned model: a full checkpoint, or a PEFT LoRA adapter directory
// merged over `base` (which must outlive the result).
absl::StatusOr<std::unique_ptr<TensorSource>> OpenFineTunedUri(
    absl::string_view uri, const TensorSource& base,
    const UriResolver& resolver);

}  // namespace tailor

#endif  // TAILOR_IO_OPEN_CHECKPOINT_H_
