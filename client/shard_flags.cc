#include "client/shard_flags.h"

#include <unistd.h>

#include <cstdlib>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "util/file_util.h"
#include "util/quote.h"
#include "util/sha256.h"
#include "util/status_macros.h"

namespace tailor::cli {
namespace {

// --shard-dir / --from an object-storage prefix: `out` gets the canonical
// prefix (remote) and a local scratch directory for it (dir) under the
// resolver's scratch directory: a shard's is named after the prefix, so
// that a shard run again on the same machine finds its journal; assemble's
// (its copy of the bundles) after the prefix and the process.
absl::StatusOr<ShardOptions> ResolveRemoteShardDir(const ShardFlags& flags,
                                                   const UriResolver& resolver,
                                                   ShardOptions out) {
  const char* dir_flag = flags.assemble ? "--from" : "--shard-dir";
  TAILOR_ASSIGN_OR_RETURN(ObjectUri uri,
                          resolver.CheckRemote(flags.dir, dir_flag));
  if (uri.scheme != "s3") {
    return absl::InvalidArgumentError(absl::StrCat(
        dir_flag, ": ", uri.ToString().substr(0, 200),
        ": shard bundles need a store that can be listed and written; give "
        "an s3:// prefix"));
  }
  if (!uri.key.empty() && !absl::EndsWith(uri.key, "/")) uri.key += '/';
  TAILOR_RETURN_IF_ERROR(resolver.StoreFor(uri).status());
  if (resolver.scratch_dir().empty()) {
    return absl::FailedPreconditionError(absl::StrCat(
        dir_flag, ": ", uri.ToString().substr(0, 200),
        " needs a local --scratch-dir (the shard's journal and its bundle "
        "before upload, or assemble's copy of the bundles)"));
  }
  out.remote = uri.ToString();
  const std::string tag = Sha256Hex(out.remote).substr(0, 16);
  out.dir = JoinPath(
      resolver.scratch_dir(),
      flags.assemble ? absl::StrCat("tailor-assemble-", tag, "-", ::getpid())
                     : absl::StrCat("tailor-shards-", tag));
  TAILOR_RETURN_IF_ERROR(MakeDirectories(out.dir));
  return out;
}

}  // namespace

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
  if (IsRemoteUri(flags.dir))
    return ResolveRemoteShardDir(flags, resolver, out);
  const std::string scheme = UriScheme(flags.dir);
  if (!scheme.empty() && scheme != "file") {
    return absl::InvalidArgumentError(absl::StrCat(
        dir_flag, ": ", Quote(flags.dir.substr(0, 200)), ": ", scheme,
        ":// is not a place for shard bundles: give a directory on a volume "
        "every shard and assemble mount, or an s3:// prefix"));
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
