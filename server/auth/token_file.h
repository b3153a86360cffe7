#ifndef TAILOR_SERVER_AUTH_TOKEN_FILE_H_
#define TAILOR_SERVER_AUTH_TOKEN_FILE_H_

// Bearer tokens: the token file (tailord --auth-token-file,
// --metrics-token-file) and its reloading. No token is ever stored, logged
// or echoed: the file holds SHA-256 digests, and errors name the file and
// line, never a digest.

#include <sys/types.h>

#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"

namespace tailor::server::auth {

// Roles a token (or a certificate principal) can have.
inline constexpr char kRoleUser[] = "user";
inline constexpr char kRoleAdmin[] = "admin";

// One line of a token file.
struct TokenEntry {
  std::string sha256;  // 32 bytes, raw (not hex)
  std::string principal;
  std::string role;  // kRoleUser or kRoleAdmin
  // The principal's own allowed roots (jobs::Caller::allowed_roots); empty:
  // the server's.
  std::vector<std::string> roots;
};

// Limits of a token file and of what a client may present.
inline constexpr size_t kMaxTokenFileBytes = 1 << 20;
inline constexpr size_t kMaxTokenBytes = 1024;
inline constexpr size_t kMaxPrincipalBytes = 128;

// A parsed token file: lines of
//   SHA256-HEX-OF-TOKEN PRINCIPAL [ROLE] [root=DIR]...
// separated by spaces or tabs; blank lines and lines starting with '#' are
// ignored. The digest is 64 hex digits (either case); the principal 1-128
// characters of [A-Za-z0-9._@:/+-]; the role `user` (the default) or
// `admin`; each root=DIR (an absolute path, at most 16) restricts the jobs
// of that token to URIs inside DIR as well as inside the server's roots. A
// digest may appear once. INVALID_ARGUMENT naming `path`, the
// line number and the rule broken (never the digest).
absl::StatusOr<std::vector<TokenEntry>> ParseTokenFile(absl::string_view text,
                                                       absl::string_view path);

// Whether `name` is a valid principal name (the rule above).
bool ValidPrincipalName(absl::string_view name);

// The entry whose digest is SHA-256(`token`), or nullopt. Compares the
// digest with every entry in constant time (no early exit, CRYPTO_memcmp),
// so timing reveals neither whether nor where a token matched.
std::optional<TokenEntry> LookupToken(const std::vector<TokenEntry>& entries,
                                      absl::string_view token);

// A token file kept current: read at Open(), then polled every
// `reload_interval` (its device, inode, size, mtime and ctime; a Kubernetes
// Secret volume swaps a symlink, which a stat() sees) and re-read when it
// changed. A re-read that fails (unreadable, malformed) keeps the previous
// tokens and logs a warning naming the file and the rule broken; a removed
// file keeps them too. Calls in flight are never disturbed.
//
// Thread-safe.
class TokenFile {
 public:
  // INVALID_ARGUMENT / NOT_FOUND naming `path` if it cannot be read or
  // parsed.
  static absl::StatusOr<std::unique_ptr<TokenFile>> Open(
      const std::string& path, absl::Duration reload_interval);
  ~TokenFile();  // stops the polling thread
  TokenFile(const TokenFile&) = delete;
  TokenFile& operator=(const TokenFile&) = delete;

  // LookupToken over the current entries.
  std::optional<TokenEntry> Lookup(absl::string_view token) const;
  const std::string& path() const { return path_; }
  // Successful loads so far (1 after Open); for tests and logs.
  int64_t generation() const;

 private:
  struct FileId {
    dev_t dev = 0;
    ino_t ino = 0;
    off_t size = 0;
    int64_t mtime_ns = 0, ctime_ns = 0;
    bool operator==(const FileId& o) const {
      return dev == o.dev && ino == o.ino && size == o.size &&
             mtime_ns == o.mtime_ns && ctime_ns == o.ctime_ns;
    }
  };
  TokenFile(std::string path, absl::Duration interval)
      : path_(std::move(path)), interval_(interval) {}
  // Reads and parses the file; on success replaces the entries.
  absl::Status Load();
  static std::optional<FileId> Stat(const std::string& path);
  void Poll();

  const std::string path_;
  const absl::Duration interval_;
  mutable absl::Mutex mu_;  // guards the fields below
  std::shared_ptr<const std::vector<TokenEntry>> entries_ ABSL_GUARDED_BY(mu_);
  std::optional<FileId> loaded_ ABSL_GUARDED_BY(mu_);  // the file Load read
  int64_t generation_ ABSL_GUARDED_BY(mu_) = 0;
  bool stop_ ABSL_GUARDED_BY(mu_) = false;
  std::thread poller_;
};

}  // namespace tailor::server::auth

#endif  // TAILOR_SERVER_AUTH_TOKEN_FILE_H_
