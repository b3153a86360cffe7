#include "client/remote_flags.h"

#include <cstdlib>
#include <utility>

namespace tailor::cli {

void AddRemoteStorageFlags(CLI::App* cmd, RemoteStorageFlags* flags,
                           bool writes) {
  cmd->add_option("--ca-file", flags->ca_file,
                  "PEM bundle of CAs to trust for https:// and s3:// "
                  "endpoints (default: SSL_CERT_FILE, else the system store)");
  cmd->add_option("--cache-dir", flags->cache_dir,
                  "local read cache for remote checkpoints, keyed by URI, "
                  "ETag and size; shared safely by concurrent runs (default: "
                  "no cache)");
  cmd->add_option("--cache-bytes", flags->cache_bytes,
                  "size cap of --cache-dir in bytes; least recently used "
                  "entries not in use are evicted (default 64 GiB)")
      ->check(CLI::PositiveNumber);
  if (writes) {
    cmd->add_option("--scratch-dir", flags->scratch_dir,
                    "local directory where remote (s3://) outputs are staged "
                    "before they are uploaded (default $TMPDIR, else /tmp)");
  }
}

absl::StatusOr<UriResolver> MakeCommandResolver(std::vector<std::string> roots,
                                                RemoteStorageFlags flags) {
  const bool no_roots_given = roots.empty();
  if (no_roots_given) roots.push_back("/");
  if (flags.scratch_dir.empty()) {
    const char* tmp = std::getenv("TMPDIR");
    flags.scratch_dir = tmp != nullptr && *tmp != '\0' ? tmp : "/tmp";
  }
  absl::StatusOr<UriResolver::Remote> remote = MakeRemoteAccess(flags);
  if (!remote.ok()) return remote.status();
  // No --allowed-root: every local path and every remote URI, as the
  // defaults say ("default /").
  remote->admit_all_remote = no_roots_given;
  return UriResolver::Create(roots, {}, *std::move(remote));
}

}  // namespace tailor::cli
