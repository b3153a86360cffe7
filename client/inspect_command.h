#ifndef TAILOR_CLIENT_INSPECT_COMMAND_H_
#define TAILOR_CLIENT_INSPECT_COMMAND_H_

#include <iosfwd>
#include <string>
#include <vector>

#include "absl/status/status.h"

namespace tailor::cli {

struct InspectArgs {
  std::string uri;
  std::string base_uri;          // for a LoRA adapter: show the merged view
  std::string output = "table";  // table | json
  std::vector<std::string> allowed_roots;
};

// `tailorctl inspect`: lists a checkpoint's tensors (name, dtype, shape,
// bytes, file) and totals on `out`. Works on sharded and single-file
// checkpoints and on PEFT LoRA adapter directories (alone, or merged over
// --base).
absl::Status RunInspect(const InspectArgs& args, std::ostream& out);

}  // namespace tailor::cli

#endif  // TAILOR_CLIENT_INSPECT_COMMAND_H_
