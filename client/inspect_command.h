#ifndef TAILOR_CLIENT_INSPECT_COMMAND_H_
#define TAILOR_CLIENT_INSPECT_COMMAND_H_

#include <iosfwd>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "storage/object_store_factory.h"
#include "storage/uri_resolver.h"

namespace tailor::cli {

struct InspectArgs {
  std::string uri;
  std::string base_uri;          // for a LoRA adapter: show the merged view
  std::string output = "table";  // table | json
  std::vector<std::string> allowed_roots;
  RemoteStorageFlags remote;  // --ca-file, --cache-dir, --cache-bytes
};

// `tailorctl inspect`: lists a checkpoint's tensors (name, dtype, shape,
// bytes, file) and totals on `out`. Works on sharded and single-file
// checkpoints and on PEFT LoRA adapter directories (alone, or merged over
// --base).
// Remote checkpoints (s3://, https://, hf://) are read by range: the
// headers only.
absl::Status RunInspect(const InspectArgs& args, std::ostream& out);
// The same with `resolver` instead of args.allowed_roots / args.remote.
absl::Status RunInspect(const InspectArgs& args, const UriResolver& resolver,
                        std::ostream& out);

}  // namespace tailor::cli

#endif  // TAILOR_CLIENT_INSPECT_COMMAND_H_
