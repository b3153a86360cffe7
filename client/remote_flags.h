#ifndef TAILOR_CLIENT_REMOTE_FLAGS_H_
#define TAILOR_CLIENT_REMOTE_FLAGS_H_

// tailorctl's remote-storage flags (issue #16), shared by every command that
// reads or writes checkpoints: --ca-file, --cache-dir, --cache-bytes and,
// for commands that write, --scratch-dir.

#include <string>
#include <vector>

#include "CLI/CLI.hpp"
#include "absl/status/statusor.h"
#include "storage/object_store_factory.h"
#include "storage/uri_resolver.h"

namespace tailor::cli {

// The help text of --allowed-root, for every command that takes it.
inline constexpr char kAllowedRootHelp[] =
    "directory or remote prefix (s3://bucket/prefix/, https://host/path/, "
    "hf://org/repo/) every URI must lie under (repeatable; default: / and "
    "every remote URI; once one is given, only what the given ones admit)";

void AddRemoteStorageFlags(CLI::App* cmd, RemoteStorageFlags* flags,
                           bool writes);

// The resolver of a command: `roots` (default "/"), the remote access of
// `flags`; the scratch directory defaults to $TMPDIR (else /tmp).
absl::StatusOr<UriResolver> MakeCommandResolver(std::vector<std::string> roots,
                                                RemoteStorageFlags flags);

}  // namespace tailor::cli

#endif  // TAILOR_CLIENT_REMOTE_FLAGS_H_
