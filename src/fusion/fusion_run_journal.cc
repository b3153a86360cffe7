// FusionRun's journal glue (fusion_run.h, journal.h): the identity a journal
// must match (this spec over these inputs' files), opening it, recording
// each computed tensor, spooling streamed bytes to a sidecar, and resuming a
// tensor from a valid entry. The journal is an optimisation: when it cannot
// be written the run goes on without it (a note says so).

#include <sys/stat.h>

#include <utility>

#include "absl/strings/str_cat.h"
#include "fusion/fusion_run.h"
#include "io/lora_adapter.h"
#include "util/sha256.h"
#include "util/status_macros.h"

namespace tailor {
namespace fusion_internal {

namespace {

// Identity of an input file beyond its header: the same header with other
// values (a checkpoint rewritten in place) changes its size, mtime or inode.
nlohmann::json FileStamp(const std::string& path) {
  struct stat st;
  if (::stat(path.c_str(), &st) != 0) return {path, nullptr};
  return {path, static_cast<int64_t>(st.st_size),
          static_cast<int64_t>(st.st_mtim.tv_sec) * 1'000'000'000 +
              st.st_mtim.tv_nsec,
          static_cast<int64_t>(st.st_ino)};
}

}  // namespace

nlohmann::json FusionRun::JournalIdentity() const {
  nlohmann::json files = nlohmann::json::array();
  auto stamp = [&](const Checkpoint& ckpt) {
    for (const auto& f : ckpt.files()) files.push_back(FileStamp(f->path()));
  };
  stamp(*base_);
  for (const auto& task : tasks_) {
    if (task->patch) files.push_back(FileStamp(task->patch->path()));
    if (task->calibration) {
      files.push_back(FileStamp(task->calibration->path()));
    }
    if (auto* c = dynamic_cast<const Checkpoint*>(task->finetuned.get())) {
      stamp(*c);
    } else if (auto* lora =
                   dynamic_cast<const LoraFineTuned*>(task->finetuned.get())) {
      stamp(lora->adapter());
    }
  }
  return {{"spec_sha256", Sha256Hex(spec_.ToJson().dump())},
          {"sources", sources_},
          {"files", files}};
}

absl::Status FusionRun::OpenJournal() {
  // A shard's journal is in the shard directory; assembling reads bundles.
  const ShardOptions& shard = options_.shard;
  if (shard.role == ShardOptions::Role::kAssemble) return absl::OkStatus();
  const std::string dir =
      shard.role == ShardOptions::Role::kShard
          ? ShardJournalDir(shard.dir, shard.index, shard.count)
          : options_.journal_dir;
  if (dir.empty()) return absl::OkStatus();
  TAILOR_ASSIGN_OR_RETURN(
      FusionJournal::Opened opened,
      FusionJournal::Open(dir, JournalIdentity(),
                          JournalLimits{options_.journal_max_bytes,
                                        options_.journal_reserve_bytes}));
  journal_ = std::move(opened.journal);
  if (opened.discarded) {
    Note(absl::StrCat("journal ", dir,
                      " belonged to another spec or other inputs; "
                      "discarded, starting from the first tensor"));
  } else if (opened.entries > 0) {
    Note(absl::StrCat("resuming from journal ", dir, ": ", opened.entries,
                      " fused tensors already done"));
  }
  return absl::OkStatus();
}

void FusionRun::WriteJournal(const JournalEntry& entry) {
  absl::MutexLock lock(&journal_mu_);
  if (journal_failed_) return;
  const absl::Status s = journal_->Write(entry);
  if (s.ok()) return;
  Note(absl::StrCat("journal ", journal_->dir(), ": cannot record tensor ",
                    entry.index, " ('", entry.name, "'): ", s.message(),
                    "; continuing without the journal"));
  journal_failed_ = true;
}

std::shared_ptr<JournalFusedSpool> FusionRun::BeginSpool(
    size_t index, const TensorInfo& info) {
  if (!journal_) return nullptr;
  absl::MutexLock lock(&journal_mu_);
  if (journal_failed_) return nullptr;
  absl::StatusOr<std::unique_ptr<JournalFusedSpool>> spool =
      journal_->BeginFused(static_cast<int64_t>(index), info.nbytes);
  if (spool.ok()) return std::move(*spool);
  DropJournal(static_cast<int64_t>(index), info.name, spool.status());
  return nullptr;
}

void FusionRun::Spool(std::shared_ptr<JournalFusedSpool>& spool,
                      absl::string_view bytes) {
  if (!spool) return;
  const absl::Status s = spool->Append(bytes);
  if (s.ok()) return;
  spool.reset();
  absl::MutexLock lock(&journal_mu_);
  if (!journal_failed_) DropJournal(-1, "", s);
}

void FusionRun::DropJournal(int64_t index, const std::string& name,
                            const absl::Status& why)
    ABSL_EXCLUSIVE_LOCKS_REQUIRED(journal_mu_) {
  Note(absl::StrCat("journal ", journal_->dir(), ": cannot record tensor ",
                    index >= 0 ? absl::StrCat(index, " ('", name, "')")
                               : std::string("being streamed"),
                    ": ", why.message(), "; continuing without the journal"));
  journal_failed_ = true;
}

std::optional<JournalEntry> FusionRun::Resume(size_t index,
                                              const TensorInfo& info) {
  if (!journal_ || !journal_->Has(static_cast<int64_t>(index))) {
    return std::nullopt;
  }
  absl::StatusOr<JournalEntry> e = journal_->Read(static_cast<int64_t>(index));
  if (const absl::Status fits = EntryFits(e, info); !fits.ok()) {
    Note(absl::StrCat("journal entry ", index, " ('", info.name,
                      "') is unusable, computing it again: ", fits.message()));
    return std::nullopt;
  }
  absl::MutexLock lock(&mu_);
  ++resumed_tensors_;
  return *std::move(e);
}

absl::Status FusionRun::EntryFits(const absl::StatusOr<JournalEntry>& e,
                                  const TensorInfo& info) const {
  if (!e.ok()) return e.status();
  if (e->name != info.name || (writer_ && e->FusedBytes() != info.nbytes) ||
      (stitched_ && e->FindPatch("stitched") == nullptr)) {
    return absl::InvalidArgumentError("it does not fit the plan");
  }
  for (size_t t = 0; t < tasks_.size(); ++t) {
    if (tasks_[t]->patch_writer &&
        e->FindPatch(absl::StrCat("task", t)) == nullptr) {
      return absl::InvalidArgumentError("it lacks a per-task patch");
    }
  }
  return absl::OkStatus();
}

}  // namespace fusion_internal
}  // namespace tailor
