#include "client/shard_flags.h"

#include <cstdlib>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "util/file_util.h"
#include "util/quote.h"
#include "util/status_macros.h"

namespace tailor::cli {

absl::StatusOr<ShardOptions> ResolveShardFlags(const ShardFlags& flags,
                                               const UriResolver& resolver) {
  const char* dir_flag = flags.assemble ? "--from" : "--shard-dir";
  ShardOptions out;
  if (!flags.assemble && !flags.shard && !flags.shards && flags.dir.empty()) {
    return out;  // an ordinary run
  }
  if (!flags.shards) {
    return absl::InvalidArgumentError(
        flags.assemble ? "--shards: required (the number of shard bundles)"
                       : "--shards: required with --shard or --shard-dir");
  }
  if (flags.dir.empty()) {
    return absl::InvalidArgumentError(absl::StrCat(
        dir_flag, ": required with --shards (the directory of the bundles)"));
  }
  out.count = *flags.shards;
  if (flags.assemble) {
    out.role = ShardOptions::Role::kAssemble;
    TAILOR_RETURN_IF_ERROR(
        ValidateShardIndex(0, out.count, "--shard", "--shards"));
  } else {
    out.role = ShardOptions::Role::kShard;
    if (flags.shard) {
      out.index = *flags.shard;
      TAILOR_RETURN_IF_ERROR(
          ValidateShardIndex(out.index, out.count, "--shard", "--shards"));
    } else {
      const char* env = std::getenv("JOB_COMPLETION_INDEX");
      if (env == nullptr || *env == '\0') {
        return absl::InvalidArgumentError(
            "--shard: not given and $JOB_COMPLETION_INDEX is not set (give "
            "the shard index, or run in a Kubernetes Indexed Job)");
      }
      if (!absl::SimpleAtoi(env, &out.index)) {
        return absl::InvalidArgumentError(
            absl::StrCat("$JOB_COMPLETION_INDEX: not an integer: ",
                         Quote(std::string(env).substr(0, 40))));
      }
      TAILOR_RETURN_IF_ERROR(ValidateShardIndex(
          out.index, out.count, "$JOB_COMPLETION_INDEX", "--shards"));
    }
  }
  const std::string scheme = UriScheme(flags.dir);
  if (!scheme.empty() && scheme != "file") {
    return absl::UnimplementedError(absl::StrCat(
        dir_flag, ": ", Quote(flags.dir.substr(0, 200)), ": shard bundles in ",
        scheme,
        ":// storage are not implemented yet; give a directory on a volume "
        "every shard and assemble mount"));
  }
  if (flags.assemble) {
    TAILOR_ASSIGN_OR_RETURN(out.dir, resolver.ResolveExisting(flags.dir));
  } else {
    TAILOR_ASSIGN_OR_RETURN(out.dir, resolver.ResolveForWrite(flags.dir));
    TAILOR_RETURN_IF_ERROR(MakeDirectories(out.dir));
  }
  if (!IsDirectory(out.dir)) {
    return absl::InvalidArgumentError(
        absl::StrCat(dir_flag, ": ", out.dir, " is not a directory"));
  }
  return out;
}

}  // namespace tailor::cli
