#include "server/auth/token_file.h"

#include <openssl/crypto.h>
#include <openssl/sha.h>
#include <sys/stat.h>

#include "absl/strings/ascii.h"
#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "util/file_util.h"
#include "util/log.h"

namespace tailor::server::auth {
namespace {

std::string RawSha256(absl::string_view bytes) {
  unsigned char digest[SHA256_DIGEST_LENGTH];
  SHA256(reinterpret_cast<const unsigned char*>(bytes.data()), bytes.size(),
         digest);
  return std::string(reinterpret_cast<const char*>(digest), sizeof(digest));
}

}  // namespace

bool ValidPrincipalName(absl::string_view name) {
  if (name.empty() || name.size() > kMaxPrincipalBytes) return false;
  for (char c : name) {
    if (!absl::ascii_isalnum(c) && c != '.' && c != '_' && c != '@' &&
        c != ':' && c != '/' && c != '+' && c != '-') {
      return false;
    }
  }
  return true;
}

absl::StatusOr<std::vector<TokenEntry>> ParseTokenFile(absl::string_view text,
                                                       absl::string_view path) {
  std::vector<TokenEntry> entries;
  int number = 0;
  for (absl::string_view line : absl::StrSplit(text, '\n')) {
    ++number;
    auto error = [&](absl::string_view rule) {
      return absl::InvalidArgumentError(absl::StrCat(
          path, ":", number, ": ", rule,
          " (a line is 'SHA256-HEX-OF-TOKEN PRINCIPAL [ROLE] [root=DIR]...')"));
    };
    line = absl::StripAsciiWhitespace(line);
    if (line.empty() || line[0] == '#') continue;
    std::vector<absl::string_view> fields =
        absl::StrSplit(line, absl::ByAnyChar(" \t"), absl::SkipEmpty());
    if (fields.size() < 2) {
      return error("has fewer than 2 fields");
    }
    bool hex = fields[0].size() == 64;
    for (char c : fields[0]) hex = hex && absl::ascii_isxdigit(c);
    if (!hex) {
      return error(
          "the first field must be the token's SHA-256 as 64 hex digits "
          "(sha256sum of the token; never the token itself)");
    }
    if (!ValidPrincipalName(fields[1])) {
      return error(absl::StrCat("the principal must be 1-", kMaxPrincipalBytes,
                                " characters of [A-Za-z0-9._@:/+-]"));
    }
    TokenEntry e;
    e.sha256 = absl::HexStringToBytes(absl::AsciiStrToLower(fields[0]));
    e.principal = std::string(fields[1]);
    e.role = kRoleUser;
    size_t next = 2;
    if (fields.size() > 2 && !absl::StartsWith(fields[2], "root=")) {
      e.role = std::string(fields[2]);
      if (e.role != kRoleUser && e.role != kRoleAdmin) {
        return error("the role must be 'user' or 'admin'");
      }
      next = 3;
    }
    for (size_t i = next; i < fields.size(); ++i) {
      if (!absl::StartsWith(fields[i], "root=")) {
        return error(absl::StrCat("field ", i + 1,
                                  " must be root=DIR (after the role)"));
      }
      const absl::string_view dir = fields[i].substr(5);
      if (dir.empty() || dir[0] != '/' || dir.size() > 4096) {
        return error("root=DIR needs an absolute directory");
      }
      if (e.roots.size() == 16) return error("has more than 16 root=DIR");
      e.roots.emplace_back(dir);
    }
    for (const TokenEntry& other : entries) {
      if (other.sha256 == e.sha256) {
        return error("repeats the digest of an earlier line");
      }
    }
    entries.push_back(std::move(e));
  }
  return entries;
}

std::optional<TokenEntry> LookupToken(const std::vector<TokenEntry>& entries,
                                      absl::string_view token) {
  const std::string digest = RawSha256(token);
  const TokenEntry* found = nullptr;
  for (const TokenEntry& e : entries) {
    // Every entry is compared, whatever matched before.
    const bool equal =
        e.sha256.size() == digest.size() &&
        CRYPTO_memcmp(e.sha256.data(), digest.data(), digest.size()) == 0;
    if (equal) found = &e;
  }
  if (found == nullptr) return std::nullopt;
  return *found;
}

absl::StatusOr<std::unique_ptr<TokenFile>> TokenFile::Open(
    const std::string& path, absl::Duration reload_interval) {
  std::unique_ptr<TokenFile> file(new TokenFile(path, reload_interval));
  absl::Status s = file->Load();
  if (!s.ok()) return s;
  file->poller_ = std::thread([f = file.get()] { f->Poll(); });
  return file;
}

TokenFile::~TokenFile() {
  {
    absl::MutexLock lock(&mu_);
    stop_ = true;
  }
  if (poller_.joinable()) poller_.join();
}

std::optional<TokenFile::FileId> TokenFile::Stat(const std::string& path) {
  struct stat st;
  if (::stat(path.c_str(), &st) != 0) return std::nullopt;
  FileId id;
  id.dev = st.st_dev;
  id.ino = st.st_ino;
  id.size = st.st_size;
  id.mtime_ns = int64_t{st.st_mtim.tv_sec} * 1000000000 + st.st_mtim.tv_nsec;
  id.ctime_ns = int64_t{st.st_ctim.tv_sec} * 1000000000 + st.st_ctim.tv_nsec;
  return id;
}

absl::Status TokenFile::Load() {
  const std::optional<FileId> before = Stat(path_);
  absl::StatusOr<std::string> text =
      ReadFileToString(path_, kMaxTokenFileBytes);
  if (!text.ok()) return text.status();
  absl::StatusOr<std::vector<TokenEntry>> entries =
      ParseTokenFile(*text, path_);
  if (!entries.ok()) return entries.status();
  auto shared =
      std::make_shared<const std::vector<TokenEntry>>(std::move(*entries));
  absl::MutexLock lock(&mu_);
  entries_ = std::move(shared);
  loaded_ = before;
  ++generation_;
  return absl::OkStatus();
}

void TokenFile::Poll() {
  while (true) {
    std::optional<FileId> loaded;
    {
      absl::MutexLock lock(&mu_);
      if (mu_.AwaitWithTimeout(absl::Condition(&stop_), interval_)) return;
      loaded = loaded_;
    }
    const std::optional<FileId> now = Stat(path_);
    // A missing file keeps the tokens (a Secret update in progress).
    if (!now || (loaded && *now == *loaded)) continue;
    absl::Status s = Load();
    if (s.ok()) {
      int64_t n;
      {
        absl::MutexLock l(&mu_);
        n = static_cast<int64_t>(entries_->size());
      }
      Log(LogLevel::kInfo, "",
          absl::StrCat("token file ", path_, " reloaded: ", n, " tokens"));
    } else {
      Log(LogLevel::kWarning, "",
          absl::StrCat("token file ", path_,
                       " changed but cannot be used; keeping the previous "
                       "tokens: ",
                       s.message()));
    }
    if (!s.ok()) {
      // Retry a bad file only once it changes again.
      absl::MutexLock lock(&mu_);
      loaded_ = now;
    }
  }
}

std::optional<TokenEntry> TokenFile::Lookup(absl::string_view token) const {
  std::shared_ptr<const std::vector<TokenEntry>> entries;
  {
    absl::MutexLock lock(&mu_);
    entries = entries_;
  }
  return LookupToken(*entries, token);
}

int64_t TokenFile::generation() const {
  absl::MutexLock lock(&mu_);
  return generation_;
}

}  // namespace tailor::server::auth
