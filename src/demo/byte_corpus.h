#ifndef TAILOR_DEMO_BYTE_CORPUS_H_
#define TAILOR_DEMO_BYTE_CORPUS_H_

#include <ATen/core/Generator.h>
#include <ATen/core/Tensor.h>

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace tailor {

// Byte-level vocabulary: token b < 256 is the byte b; 256 ends a document;
// 257..259 are reserved (never produced), so a model's vocabulary is 260.
inline constexpr int64_t kEndOfDocumentToken = 256;
inline constexpr int64_t kByteLevelVocabSize = 260;

// Where a corpus comes from: files read whole, in the given order.
struct CorpusSource {
  std::string name;                // short label ("prose", "python", "c")
  std::string description;         // where the files come from, for reports
  std::vector<std::string> files;  // absolute paths
};

struct CorpusOptions {
  // Whole files are taken in order until the next one would pass this bound
  // (the first file is always taken, truncated if needed). > 0.
  uint64_t max_bytes = 2u << 20;
  // The token stream is cut into chunks of this many tokens; chunk i is
  // held out when i % heldout_every == heldout_every - 1 (10% by default).
  int64_t chunk_tokens = 2048;
  int64_t heldout_every = 10;
};

// A text corpus as byte tokens, split deterministically into a training
// stream and a held-out stream (no randomness: the split depends only on the
// bytes and the options). Immutable after Load(); thread-safe.
class ByteCorpus {
 public:
  // Reads the files (each followed by kEndOfDocumentToken). NOT_FOUND /
  // INVALID_ARGUMENT naming the file when one is missing, unreadable or not
  // a regular file; INVALID_ARGUMENT when the result is too small to give
  // both streams at least 2 chunks.
  static absl::StatusOr<ByteCorpus> Load(const CorpusSource& source,
                                         const CorpusOptions& options = {});

  // From bytes in memory (tests, `tailorctl calibrate` on one file).
  static absl::StatusOr<ByteCorpus> FromBytes(
      std::string name, const std::string& bytes,
      const CorpusOptions& options = {});

  const std::string& name() const { return name_; }
  const std::string& description() const { return description_; }
  // Files actually read (after the max_bytes cut).
  int64_t files_used() const { return files_used_; }
  // sha256 (hex) of the token stream and the split options: keys caches.
  const std::string& digest() const { return digest_; }

  // int64 1-D token streams on the CPU.
  const at::Tensor& train() const { return train_; }
  const at::Tensor& heldout() const { return heldout_; }

  // `batch` windows of `length` tokens starting at uniformly drawn offsets of
  // the training stream: int64 [batch, length]. REQUIRES: length <=
  // train().numel(). Deterministic for the generator's state.
  at::Tensor SampleTrain(int64_t batch, int64_t length,
                         at::Generator& generator) const;

  // Consecutive non-overlapping windows of `length` tokens from the start of
  // `stream` (train() or heldout()), at most `max_windows` (0 = all):
  // int64 [n, length]; n may be 0 when the stream is shorter than `length`.
  static at::Tensor Windows(const at::Tensor& stream, int64_t length,
                            int64_t max_windows);

 private:
  static absl::StatusOr<ByteCorpus> Build(
      std::string name, std::string description, std::string bytes,
      const std::vector<int64_t>& document_ends, const CorpusOptions& options);

  std::string name_;
  std::string description_;
  int64_t files_used_ = 0;
  std::string digest_;
  at::Tensor train_;
  at::Tensor heldout_;
};

// The demo's corpora, real text shipped by Debian packages that every
// bookworm machine set up by scripts/setup has. Each lists the files found,
// sorted by path; FAILED_PRECONDITION naming the package when none is there.
//
// English prose: the license texts in /usr/share/common-licenses (package
// base-files), symlinked duplicates (GPL -> GPL-3, ...) read once.
absl::StatusOr<CorpusSource> ProseCorpusSource();
// Python source: the top-level modules of Debian's Python standard library,
// /usr/lib/python3.N/*.py (package libpython3.N-stdlib; the highest N
// present).
absl::StatusOr<CorpusSource> PythonCorpusSource();
// C source: the GNU C library's headers as dpkg lists them for libc6-dev
// (/var/lib/dpkg/info/libc6-dev[:arch].list, every *.h under /usr/include).
absl::StatusOr<CorpusSource> CCorpusSource();

}  // namespace tailor

#endif  // TAILOR_DEMO_BYTE_CORPUS_H_
