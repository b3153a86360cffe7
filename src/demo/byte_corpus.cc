#include "demo/byte_corpus.h"

#include <ATen/ATen.h>
#include <limits.h>
#include <stdlib.h>

#include <algorithm>
#include <cstring>
#include <set>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "util/file_util.h"
#include "util/sha256.h"
#include "util/status_macros.h"

namespace tailor {
namespace {

// A corpus file larger than this is refused (the demo's are < 200 KiB each).
constexpr uint64_t kMaxFileBytes = 64ull << 20;

// Entries of `dir` (sorted); empty when it cannot be listed.
std::vector<std::string> ListOrEmpty(const std::string& dir) {
  absl::StatusOr<std::vector<std::string>> names = ListDirectory(dir);
  return names.ok() ? *std::move(names) : std::vector<std::string>();
}

std::string RealPath(const std::string& path) {
  char buffer[PATH_MAX];
  return ::realpath(path.c_str(), buffer) != nullptr ? std::string(buffer)
                                                     : std::string();
}

}  // namespace

absl::StatusOr<ByteCorpus> ByteCorpus::Load(const CorpusSource& source,
                                            const CorpusOptions& options) {
  if (source.files.empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat("corpus '", source.name, "': no files"));
  }
  if (options.max_bytes == 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("corpus '", source.name, "': max_bytes must be > 0"));
  }
  std::string bytes;
  std::vector<int64_t> document_ends;
  int64_t files = 0;
  for (const std::string& path : source.files) {
    if (!IsRegularFile(path)) {
      return absl::NotFoundError(absl::StrCat(
          "corpus '", source.name, "': ", path,
          " is missing or not a regular file (run scripts/setup?)"));
    }
    TAILOR_ASSIGN_OR_RETURN(std::string text,
                            ReadFileToString(path, kMaxFileBytes));
    // +1: the end-of-document token.
    if (files > 0 && bytes.size() + text.size() + 1 > options.max_bytes) break;
    if (text.size() + 1 > options.max_bytes) text.resize(options.max_bytes - 1);
    bytes += text;
    document_ends.push_back(static_cast<int64_t>(bytes.size()));
    bytes += '\0';  // placeholder for the end-of-document token
    ++files;
  }
  return Build(source.name, source.description, std::move(bytes), document_ends,
               options);
}

absl::StatusOr<ByteCorpus> ByteCorpus::FromBytes(std::string name,
                                                 const std::string& bytes,
                                                 const CorpusOptions& options) {
  return Build(std::move(name), "in-memory bytes", bytes + '\0',
               {static_cast<int64_t>(bytes.size())}, options);
}

absl::StatusOr<ByteCorpus> ByteCorpus::Build(
    std::string name, std::string description, std::string bytes,
    const std::vector<int64_t>& document_ends, const CorpusOptions& options) {
  if (options.chunk_tokens < 1 || options.heldout_every < 2) {
    return absl::InvalidArgumentError(
        absl::StrCat("corpus '", name,
                     "': chunk_tokens must be >= 1 and heldout_every >= 2"));
  }
  // Tokens: bytes as 0..255, then each document's end marked.
  const int64_t n = static_cast<int64_t>(bytes.size());
  at::Tensor tokens = at::empty({n}, at::kLong);
  int64_t* out = tokens.data_ptr<int64_t>();
  for (int64_t i = 0; i < n; ++i) {
    out[i] = static_cast<uint8_t>(bytes[i]);
  }
  for (int64_t end : document_ends) out[end] = kEndOfDocumentToken;
  const int64_t chunks = (n + options.chunk_tokens - 1) / options.chunk_tokens;
  const int64_t heldout_chunks = chunks / options.heldout_every;
  if (heldout_chunks < 2 || chunks - heldout_chunks < 2) {
    return absl::InvalidArgumentError(absl::StrCat(
        "corpus '", name, "': ", n, " tokens make ", chunks, " chunks of ",
        options.chunk_tokens, "; need at least ", 2 * options.heldout_every,
        " so that both the training and held-out streams get 2"));
  }
  std::vector<at::Tensor> train_parts, heldout_parts;
  for (int64_t c = 0; c < chunks; ++c) {
    const int64_t begin = c * options.chunk_tokens;
    const int64_t length = std::min(options.chunk_tokens, n - begin);
    at::Tensor part = tokens.narrow(0, begin, length);
    if (c % options.heldout_every == options.heldout_every - 1) {
      heldout_parts.push_back(part);
    } else {
      train_parts.push_back(part);
    }
  }
  ByteCorpus corpus;
  corpus.name_ = std::move(name);
  corpus.description_ = std::move(description);
  corpus.files_used_ = static_cast<int64_t>(document_ends.size());
  corpus.train_ = at::cat(train_parts).contiguous();
  corpus.heldout_ = at::cat(heldout_parts).contiguous();
  corpus.digest_ = Sha256Hex(absl::StrCat(
      bytes, "|ends=", absl::StrJoin(document_ends, ","),
      "|chunk=", options.chunk_tokens, "|every=", options.heldout_every));
  return corpus;
}

at::Tensor ByteCorpus::SampleTrain(int64_t batch, int64_t length,
                                   at::Generator& generator) const {
  const int64_t span = train_.numel() - length + 1;
  TORCH_CHECK(span >= 1, "corpus '", name_, "': window of ", length,
              " tokens is longer than the training stream (", train_.numel(),
              ")");
  const at::Tensor starts = at::randint(span, {batch, 1}, generator, at::kLong);
  const at::Tensor index = starts + at::arange(length, at::kLong);
  return train_.index({index});
}

at::Tensor ByteCorpus::Windows(const at::Tensor& stream, int64_t length,
                               int64_t max_windows) {
  int64_t n = stream.numel() / length;
  if (max_windows > 0) n = std::min(n, max_windows);
  return stream.narrow(0, 0, n * length).reshape({n, length}).contiguous();
}

absl::StatusOr<CorpusSource> ProseCorpusSource() {
  const std::string dir = "/usr/share/common-licenses";
  CorpusSource source;
  source.name = "prose";
  source.description =
      "English prose: license texts in /usr/share/common-licenses (Debian "
      "package base-files)";
  std::set<std::string> seen;
  for (const std::string& name : ListOrEmpty(dir)) {
    const std::string real = RealPath(JoinPath(dir, name));
    if (real.empty() || !IsRegularFile(real) || !seen.insert(real).second) {
      continue;
    }
    source.files.push_back(real);
  }
  std::sort(source.files.begin(), source.files.end());
  if (source.files.empty()) {
    return absl::FailedPreconditionError(absl::StrCat(
        "prose corpus: no files in ", dir, " (Debian package base-files)"));
  }
  return source;
}

absl::StatusOr<CorpusSource> PythonCorpusSource() {
  std::string best;
  int best_minor = -1;
  for (const std::string& name : ListOrEmpty("/usr/lib")) {
    int minor = -1;
    char trailing = 0;
    if (std::sscanf(name.c_str(), "python3.%d%c", &minor, &trailing) == 1 &&
        IsRegularFile(JoinPath(JoinPath("/usr/lib", name), "os.py")) &&
        minor > best_minor) {
      best_minor = minor;
      best = JoinPath("/usr/lib", name);
    }
  }
  if (best.empty()) {
    return absl::FailedPreconditionError(
        "python corpus: no /usr/lib/python3.N/os.py (Debian package "
        "libpython3.N-stdlib; scripts/setup installs it)");
  }
  CorpusSource source;
  source.name = "python";
  source.description = absl::StrCat(
      "Python source: the standard library's top-level modules ", best,
      "/*.py (Debian package libpython3.", best_minor, "-stdlib)");
  for (const std::string& name : ListOrEmpty(best)) {
    const std::string path = JoinPath(best, name);
    if (absl::EndsWith(name, ".py") && IsRegularFile(path)) {
      source.files.push_back(path);
    }
  }
  return source;
}

absl::StatusOr<CorpusSource> CCorpusSource() {
  const std::string info = "/var/lib/dpkg/info";
  std::string list;
  for (const std::string& name : ListOrEmpty(info)) {
    if (name == "libc6-dev.list" || (absl::StartsWith(name, "libc6-dev:") &&
                                     absl::EndsWith(name, ".list"))) {
      list = JoinPath(info, name);
      break;
    }
  }
  if (list.empty()) {
    return absl::FailedPreconditionError(
        "c corpus: libc6-dev is not installed (no "
        "/var/lib/dpkg/info/libc6-dev*.list; scripts/setup installs "
        "build-essential)");
  }
  TAILOR_ASSIGN_OR_RETURN(std::string text, ReadFileToString(list, 16 << 20));
  CorpusSource source;
  source.name = "c";
  source.description =
      "C source: the GNU C library's headers under /usr/include as listed by "
      "dpkg for libc6-dev";
  for (absl::string_view line : absl::StrSplit(text, '\n')) {
    if (absl::StartsWith(line, "/usr/include/") && absl::EndsWith(line, ".h") &&
        IsRegularFile(std::string(line))) {
      source.files.emplace_back(line);
    }
  }
  std::sort(source.files.begin(), source.files.end());
  if (source.files.empty()) {
    return absl::FailedPreconditionError(
        absl::StrCat("c corpus: ", list, " lists no headers"));
  }
  return source;
}

}  // namespace tailor
