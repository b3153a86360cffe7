#ifndef TAILOR_FUSION_JOURNAL_H_
#define TAILOR_FUSION_JOURNAL_H_

// The per-tensor journal of a fusion job (RunOptions::journal_dir): what the
// job fed its writers for each fused tensor, durable as soon as the tensor
// is done, so that an interrupted job continues from its last completed
// tensor instead of starting over. Torch-free: entries are bytes and JSON.
//
// Layout of the journal directory:
//   manifest.json               {"format": "tailor-journal/1",
//                                "identity": <the job's identity>}
//   <plan index, 8 digits>.safetensors
//                               one fused tensor; a safetensors file whose
//                               tensors are U8 byte strings:
//     "fused"                   the output tensor bytes as written (absent
//                               when the job writes no fused checkpoint or
//                               they are in the sidecar below)
//     "<key>.mask", "<key>.values"
//                               a patch entry (PackedPatchEntry) for patch
//                               "<key>" ("stitched", "task<i>")
//   and whose `__metadata__` holds format, index, name, "record" (JSON: the
//   report entry, warnings, accumulator increments, patch keys, shapes and
//   stats) and "sha256" (of the data section).
//   <plan index, 8 digits>.fused
//                               a streamed tensor's stored bytes, spooled
//                               as they were produced (BeginFused); the
//                               entry's record holds their size and
//                               sha256 ("fused_file")
// Every file is written atomically (temp file, fsync, rename, directory
// fsync; a sidecar before its entry), so an entry is either absent or
// complete; a damaged one (sidecar included) fails Read() and is
// recomputed by the caller.

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/functional/function_ref.h"
#include "absl/status/statusor.h"
#include "fusion/patch.h"
#include "nlohmann/json.hpp"
#include "util/file_util.h"
#include "util/sha256.h"

namespace tailor {

inline constexpr char kJournalFormat[] = "tailor-journal/1";

// One patch entry of a journalled tensor.
struct JournalPatch {
  std::string key;  // "stitched" or "task<i>"
  PackedPatchEntry packed;
  nlohmann::json stats;  // as given to PatchWriter
};

// A streamed tensor's stored bytes on their way into the journal
// (FusionJournal::BeginFused): appended chunk by chunk to a hidden temp file
// in the journal directory, hashed as they come, so that journalling a
// tensor needs no memory beyond the chunk. FusionJournal::Write() of the
// entry holding it publishes it as the entry's sidecar; otherwise the
// destructor removes it (and FusionJournal::Open() removes one left by a
// killed process). Not thread-safe.
class JournalFusedSpool {
 public:
  ~JournalFusedSpool();
  JournalFusedSpool(const JournalFusedSpool&) = delete;
  JournalFusedSpool& operator=(const JournalFusedSpool&) = delete;

  // Appends the next bytes. After an error the spool is unusable (Write()
  // of its entry refuses).
  absl::Status Append(absl::string_view bytes);
  uint64_t size() const { return size_; }

 private:
  friend class FusionJournal;
  JournalFusedSpool() = default;
  std::string dir_, temp_name_;
  ScopedFd fd_;
  Sha256 sha_;
  uint64_t size_ = 0;
  bool failed_ = false;
  bool committed_ = false;
};

// Everything a fused tensor contributed to a job's outputs and report.
struct JournalEntry {
  int64_t index = 0;  // in the job's plan
  std::string name;
  std::optional<std::string> fused;  // stored bytes of the fused tensor
  // Instead of `fused`, for Write(): the stored bytes, spooled.
  std::shared_ptr<JournalFusedSpool> fused_spool;
  // Instead of `fused`, from Read(): the stored bytes are in the entry's
  // sidecar (verified against its sha256 by Read()), this many; feed them
  // to a writer with FusionJournal::CopyFused().
  std::optional<uint64_t> fused_file_bytes;
  std::string fused_file_sha256;  // hex, with fused_file_bytes
  std::vector<JournalPatch> patches;
  nlohmann::json report;              // the per-tensor report entry
  std::vector<std::string> warnings;  // emitted while fusing it, in order
  // (error_mask_only, error_compensated) added to the job totals, in order.
  std::vector<std::pair<double, double>> errors;

  const JournalPatch* FindPatch(const std::string& key) const;
  // Bytes of the fused tensor, in `fused` or the sidecar; nullopt: none.
  std::optional<uint64_t> FusedBytes() const;
};

// What a journal may take of its volume (RunOptions::journal_max_bytes,
// journal_reserve_bytes).
struct JournalLimits {
  uint64_t max_bytes = 0;      // the journal's files in all; 0: no limit
  uint64_t reserve_bytes = 0;  // free space every write leaves
};

class FusionJournal {
 public:
  struct Opened {
    std::unique_ptr<FusionJournal> journal;
    // A journal was there but belonged to another job (or was unreadable):
    // it was emptied.
    bool discarded = false;
    int64_t entries = 0;  // entry files found (not yet validated)
  };

  // Opens (creating it if needed) the journal in `dir` for a job identified
  // by `identity` (any JSON; compared for equality with the manifest's). A
  // directory holding another identity's journal, or no valid manifest, is
  // emptied first: a journal is never reused for a different job.
  // `limits` bound Write(); the entries already there count.
  static absl::StatusOr<Opened> Open(const std::string& dir,
                                     const nlohmann::json& identity,
                                     JournalLimits limits = {});
  // A journal-layout directory opened for Read() and CopyFused() only (a
  // shard bundle, shard_bundle.h): no manifest check, nothing removed or
  // written. The caller has verified the directory.
  static std::unique_ptr<FusionJournal> OpenForReading(const std::string& dir);

  const std::string& dir() const { return dir_; }
  // Whether an entry file for `index` exists.
  bool Has(int64_t index) const;
  // Reads and verifies an entry (format, digest, index). DATA_LOSS or
  // INVALID_ARGUMENT for a damaged one, NOT_FOUND for none.
  absl::StatusOr<JournalEntry> Read(int64_t index) const;
  // Records an entry durably, replacing any entry of that index.
  // RESOURCE_EXHAUSTED (writing nothing) when the entry would take the
  // journal past limits.max_bytes or leave less than limits.reserve_bytes
  // free on the volume; a failed write (ENOSPC) leaves no partial file.
  absl::Status Write(const JournalEntry& entry) const;
  uint64_t bytes() const { return bytes_; }
  // A spool for entry `index`'s fused bytes, `nbytes` of them expected:
  // RESOURCE_EXHAUSTED (creating nothing) when they alone would break the
  // limits, as Write() checks them.
  absl::StatusOr<std::unique_ptr<JournalFusedSpool>> BeginFused(
      int64_t index, uint64_t nbytes) const;
  // Feeds the sidecar bytes of an entry Read() returned to `sink` in
  // pieces of at most 1 MiB, checking their sha256 again (DATA_LOSS if
  // they changed; `sink` has then seen them).
  absl::Status CopyFused(
      const JournalEntry& entry,
      absl::FunctionRef<absl::Status(absl::string_view)> sink) const;
  std::string FusedPath(int64_t index) const;

  std::string EntryPath(int64_t index) const;

 private:
  FusionJournal(std::string dir, JournalLimits limits, uint64_t bytes)
      : dir_(std::move(dir)), limits_(limits), bytes_(bytes) {}
  // RESOURCE_EXHAUSTED when `size` more bytes break the limits.
  absl::Status CheckLimits(uint64_t size) const;
  // Streams the sidecar of `index` through sha256 and `sink`.
  absl::Status ReadFused(
      int64_t index, uint64_t bytes, const std::string& sha256,
      absl::FunctionRef<absl::Status(absl::string_view)> sink) const;
  std::string dir_;
  JournalLimits limits_;
  mutable uint64_t bytes_ = 0;  // of the journal's files, as written here
};

// Bytes of the journal directory's regular files (for reporting its size).
absl::StatusOr<uint64_t> JournalBytes(const std::string& dir);

}  // namespace tailor

#endif  // TAILOR_FUSION_JOURNAL_H_
