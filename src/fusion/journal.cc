#include "fusion/journal.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include <algorithm>
#include <map>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "io/safetensors_header.h"
#include "util/errno_status.h"
#include "util/file_util.h"
#include "util/json_util.h"
#include "util/sha256.h"
#include "util/status_macros.h"

namespace tailor {
namespace {

constexpr char kManifest[] = "manifest.json";
constexpr char kEntrySuffix[] = ".safetensors";
constexpr char kFused[] = "fused";
constexpr char kFusedSuffix[] = ".fused";
// Sidecar reads go through a buffer of this size.
constexpr size_t kFusedCopyBytes = size_t{1} << 20;
// Entries hold one tensor's outputs; this bounds what Read() loads.
constexpr uint64_t kMaxEntryBytes = uint64_t{1} << 40;

// The manifest's identity, or nullopt if there is no valid manifest.
std::optional<nlohmann::json> ReadIdentity(const std::string& dir) {
  absl::StatusOr<std::string> text =
      ReadFileToString(JoinPath(dir, kManifest), 1 << 20);
  if (!text.ok()) return std::nullopt;
  nlohmann::json manifest =
      nlohmann::json::parse(*text, nullptr, /*allow_exceptions=*/false);
  if (!manifest.is_object() || manifest.value("format", "") != kJournalFormat ||
      !manifest.contains("identity")) {
    return std::nullopt;
  }
  return manifest["identity"];
}

}  // namespace

JournalFusedSpool::~JournalFusedSpool() {
  if (committed_ || !fd_.valid()) return;
  fd_ = ScopedFd();
  (void)::unlink(JoinPath(dir_, temp_name_).c_str());
}

absl::Status JournalFusedSpool::Append(absl::string_view bytes) {
  if (failed_ || committed_) {
    return absl::FailedPreconditionError(
        absl::StrCat("journal spool ", temp_name_, " is not writable"));
  }
  absl::Status s = PWriteFully(fd_.get(), bytes.data(), bytes.size(), size_,
                               JoinPath(dir_, temp_name_));
  if (!s.ok()) {
    failed_ = true;
    return s;
  }
  sha_.Update(bytes);
  size_ += bytes.size();
  return absl::OkStatus();
}

std::optional<uint64_t> JournalEntry::FusedBytes() const {
  if (fused) return fused->size();
  if (fused_spool) return fused_spool->size();
  return fused_file_bytes;
}

const JournalPatch* JournalEntry::FindPatch(const std::string& key) const {
  for (const JournalPatch& p : patches) {
    if (p.key == key) return &p;
  }
  return nullptr;
}

absl::StatusOr<FusionJournal::Opened> FusionJournal::Open(
    const std::string& dir, const nlohmann::json& identity,
    JournalLimits limits) {
  if (dir.empty()) {
    return absl::InvalidArgumentError("journal: empty directory");
  }
  TAILOR_RETURN_IF_ERROR(MakeDirectories(dir));
  TAILOR_ASSIGN_OR_RETURN(std::vector<std::string> names, ListDirectory(dir));
  Opened opened;
  const std::optional<nlohmann::json> found = ReadIdentity(dir);
  const bool matches = found.has_value() && *found == identity;
  for (const std::string& name : names) {
    // Temp files of interrupted writes go in any case; everything goes when
    // the journal belongs to another job.
    if (!matches || absl::StartsWith(name, ".")) {
      TAILOR_RETURN_IF_ERROR(RemoveAll(JoinPath(dir, name)));
      if (!absl::StartsWith(name, ".")) opened.discarded = true;
    } else if (absl::EndsWith(name, kEntrySuffix)) {
      ++opened.entries;
    }
  }
  if (!matches) {
    const nlohmann::json manifest = {{"format", kJournalFormat},
                                     {"identity", identity}};
    TAILOR_RETURN_IF_ERROR(
        WriteFileAtomically(JoinPath(dir, kManifest), manifest.dump(2) + "\n"));
  }
  absl::StatusOr<uint64_t> bytes = JournalBytes(dir);
  opened.journal.reset(new FusionJournal(dir, limits, bytes.value_or(0)));
  return opened;
}

std::unique_ptr<FusionJournal> FusionJournal::OpenForReading(
    const std::string& dir) {
  return std::unique_ptr<FusionJournal>(new FusionJournal(dir, {}, 0));
}

std::string FusionJournal::EntryPath(int64_t index) const {
  return JoinPath(dir_, absl::StrFormat("%08d%s", index, kEntrySuffix));
}

std::string FusionJournal::FusedPath(int64_t index) const {
  return JoinPath(dir_, absl::StrFormat("%08d%s", index, kFusedSuffix));
}

absl::Status FusionJournal::CheckLimits(uint64_t size) const {
  if (limits_.max_bytes > 0 && bytes_ + size > limits_.max_bytes) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "the journal's budget of ", limits_.max_bytes, " bytes is spent (",
        bytes_, " bytes used, the entry needs ", size, ")"));
  }
  if (limits_.reserve_bytes > 0) {
    struct statvfs st;
    if (::statvfs(dir_.c_str(), &st) == 0) {
      const uint64_t free_bytes =
          static_cast<uint64_t>(st.f_bavail) * st.f_frsize;
      if (free_bytes < size + limits_.reserve_bytes) {
        return absl::ResourceExhaustedError(absl::StrCat(
            "the data volume has ", free_bytes, " bytes free; the entry (",
            size, " bytes) would leave less than the ", limits_.reserve_bytes,
            " bytes kept for the job store"));
      }
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<JournalFusedSpool>> FusionJournal::BeginFused(
    int64_t index, uint64_t nbytes) const {
  TAILOR_RETURN_IF_ERROR(CheckLimits(nbytes));
  std::unique_ptr<JournalFusedSpool> spool(new JournalFusedSpool());
  spool->dir_ = dir_;
  // Hidden: Open() removes it if this process dies before Write().
  spool->temp_name_ =
      absl::StrFormat(".%08d%s.tmp-%d", index, kFusedSuffix, ::getpid());
  const std::string path = JoinPath(dir_, spool->temp_name_);
  const int fd =
      ::open(path.c_str(),
             O_WRONLY | O_CREAT | O_TRUNC | O_NOFOLLOW | O_CLOEXEC, 0600);
  if (fd < 0) return ErrnoError(errno, absl::StrCat("create ", path));
  spool->fd_ = ScopedFd(fd);
  return spool;
}

absl::Status FusionJournal::ReadFused(
    int64_t index, uint64_t bytes, const std::string& sha256,
    absl::FunctionRef<absl::Status(absl::string_view)> sink) const {
  const std::string path = FusedPath(index);
  TAILOR_ASSIGN_OR_RETURN(ScopedFd fd, OpenForRead(path));
  struct stat st;
  if (::fstat(fd.get(), &st) != 0 || !S_ISREG(st.st_mode) ||
      static_cast<uint64_t>(st.st_size) != bytes) {
    return absl::DataLossError(
        absl::StrCat(path, ": the sidecar is missing or not the recorded ",
                     bytes, " bytes"));
  }
  Sha256 sha;
  std::string buffer;
  for (uint64_t off = 0; off < bytes;) {
    const size_t n =
        static_cast<size_t>(std::min<uint64_t>(kFusedCopyBytes, bytes - off));
    buffer.resize(n);
    TAILOR_RETURN_IF_ERROR(PReadFully(fd.get(), buffer.data(), n, off, path));
    sha.Update(buffer);
    TAILOR_RETURN_IF_ERROR(sink(buffer));
    off += n;
  }
  if (sha.FinalHex() != sha256) {
    return absl::DataLossError(
        absl::StrCat(path, ": data does not match its sha256"));
  }
  return absl::OkStatus();
}

absl::Status FusionJournal::CopyFused(
    const JournalEntry& entry,
    absl::FunctionRef<absl::Status(absl::string_view)> sink) const {
  if (!entry.fused_file_bytes) {
    return absl::FailedPreconditionError(
        absl::StrCat("journal entry ", entry.index, " has no sidecar to copy"));
  }
  return ReadFused(entry.index, *entry.fused_file_bytes,
                   entry.fused_file_sha256, sink);
}

bool FusionJournal::Has(int64_t index) const {
  return IsRegularFile(EntryPath(index));
}

absl::Status FusionJournal::Write(const JournalEntry& entry) const {
  // Pieces of the data section, in order.
  std::vector<std::pair<std::string, const std::string*>> pieces;
  if (entry.fused) pieces.emplace_back(kFused, &*entry.fused);
  nlohmann::json patches = nlohmann::json::array();
  for (const JournalPatch& p : entry.patches) {
    pieces.emplace_back(p.key + ".mask", &p.packed.mask);
    pieces.emplace_back(p.key + ".values", &p.packed.values);
    patches.push_back(
        {{"key", p.key}, {"shape", p.packed.shape}, {"stats", p.stats}});
  }
  nlohmann::json errors = nlohmann::json::array();
  for (const auto& [mask_only, compensated] : entry.errors) {
    errors.push_back({mask_only, compensated});
  }
  nlohmann::json record = {{"report", entry.report},
                           {"warnings", entry.warnings},
                           {"errors", errors},
                           {"patches", patches}};
  JournalFusedSpool* const spool = entry.fused_spool.get();
  uint64_t spooled = 0;
  std::string spool_sha;
  if (spool != nullptr) {
    if (entry.fused || spool->failed_ || spool->committed_) {
      return absl::FailedPreconditionError(absl::StrCat(
          "journal entry ", entry.index, ": its fused spool is unusable"));
    }
    spooled = spool->size_;
    spool_sha = Sha256(std::move(spool->sha_)).FinalHex();
    spool->sha_ = Sha256();
    spool->failed_ = true;  // its digest is taken: one Write() only
    record["fused_file"] = {{"bytes", spooled}, {"sha256", spool_sha}};
  }
  std::vector<TensorEntry> tensors;
  uint64_t offset = 0;
  Sha256 sha;
  for (const auto& [name, bytes] : pieces) {
    TensorEntry t;
    t.name = name;
    t.dtype = DType::kU8;
    t.shape = {static_cast<int64_t>(bytes->size())};
    t.numel = t.shape[0];
    t.begin = offset;
    t.end = offset + bytes->size();
    offset = t.end;
    sha.Update(*bytes);
    tensors.push_back(std::move(t));
  }
  TAILOR_ASSIGN_OR_RETURN(
      std::string record_text,
      DumpJson(record, absl::StrCat("journal entry ", entry.index,
                                    ": not serialisable")));
  const std::map<std::string, std::string> metadata = {
      {"format", kJournalFormat},
      {"index", absl::StrCat(entry.index)},
      {"name", entry.name},
      {"record", record_text},
      {"sha256", sha.FinalHex()}};
  std::string file = SerializeSafetensorsHead(metadata, tensors);
  const uint64_t size = file.size() + offset;
  // The spooled bytes are on the volume already: count them, not again
  // against the free space.
  if (limits_.max_bytes > 0 && bytes_ + spooled + size > limits_.max_bytes) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "the journal's budget of ", limits_.max_bytes, " bytes is spent (",
        bytes_, " bytes used, the entry needs ", spooled + size, ")"));
  }
  TAILOR_RETURN_IF_ERROR(CheckLimits(size));
  if (spool != nullptr) {
    // The sidecar is durable under its final name before the entry that
    // vouches for it exists.
    const std::string temp = JoinPath(dir_, spool->temp_name_);
    if (::fsync(spool->fd_.get()) != 0) {
      return ErrnoError(errno, absl::StrCat("fsync ", temp));
    }
    if (::rename(temp.c_str(), FusedPath(entry.index).c_str()) != 0) {
      return ErrnoError(errno, absl::StrCat("rename ", temp));
    }
    spool->committed_ = true;
    spool->fd_ = ScopedFd();
    TAILOR_RETURN_IF_ERROR(FsyncDirectory(dir_));
    bytes_ += spooled;
  }
  file.reserve(size);
  for (const auto& piece : pieces) file += *piece.second;
  TAILOR_RETURN_IF_ERROR(WriteFileAtomically(EntryPath(entry.index), file));
  bytes_ += size;
  return absl::OkStatus();
}

absl::StatusOr<JournalEntry> FusionJournal::Read(int64_t index) const {
  const std::string path = EntryPath(index);
  TAILOR_ASSIGN_OR_RETURN(std::string bytes,
                          ReadFileToString(path, kMaxEntryBytes));
  TAILOR_ASSIGN_OR_RETURN(SafetensorsHeader header,
                          ParseSafetensorsBytes(bytes, path));
  auto meta = [&](const char* key) -> std::string {
    auto it = header.metadata.find(key);
    return it == header.metadata.end() ? "" : it->second;
  };
  int64_t recorded_index = -1;
  if (meta("format") != kJournalFormat ||
      !absl::SimpleAtoi(meta("index"), &recorded_index) ||
      recorded_index != index) {
    return absl::InvalidArgumentError(
        absl::StrCat(path, ": not journal entry ", index));
  }
  const absl::string_view data =
      absl::string_view(bytes).substr(header.data_offset());
  if (Sha256Hex(data) != meta("sha256")) {
    return absl::DataLossError(
        absl::StrCat(path, ": data does not match its sha256"));
  }
  auto piece = [&](const std::string& name) -> std::optional<std::string> {
    const TensorEntry* t = header.Find(name);
    if (t == nullptr) return std::nullopt;
    return std::string(data.substr(t->begin, t->nbytes()));
  };
  JournalEntry entry;
  entry.index = index;
  entry.name = meta("name");
  entry.fused = piece(kFused);
  const nlohmann::json record =
      nlohmann::json::parse(meta("record"), nullptr, false);
  if (!record.is_object()) {
    return absl::InvalidArgumentError(
        absl::StrCat(path, ": record is not a JSON object"));
  }
  try {
    if (record.contains("fused_file")) {
      entry.fused_file_bytes =
          record.at("fused_file").at("bytes").get<uint64_t>();
      entry.fused_file_sha256 =
          record.at("fused_file").at("sha256").get<std::string>();
    }
    entry.report = record.at("report");
    entry.warnings = record.at("warnings").get<std::vector<std::string>>();
    for (const auto& e : record.at("errors")) {
      entry.errors.emplace_back(e.at(0).get<double>(), e.at(1).get<double>());
    }
    for (const auto& p : record.at("patches")) {
      JournalPatch patch;
      patch.key = p.at("key").get<std::string>();
      patch.packed.shape = p.at("shape").get<std::vector<int64_t>>();
      patch.stats = p.at("stats");
      std::optional<std::string> mask = piece(patch.key + ".mask");
      std::optional<std::string> values = piece(patch.key + ".values");
      if (!mask || !values) {
        return absl::InvalidArgumentError(
            absl::StrCat(path, ": patch '", patch.key, "' lacks its data"));
      }
      patch.packed.mask = std::move(*mask);
      patch.packed.values = std::move(*values);
      entry.patches.push_back(std::move(patch));
    }
  } catch (const std::exception& e) {
    return absl::InvalidArgumentError(
        absl::StrCat(path, ": malformed record: ", e.what()));
  }
  if (entry.fused_file_bytes) {
    // The sidecar, hashed in bounded pieces: a damaged one makes the
    // entry unusable, like damaged entry data.
    if (entry.fused) {
      return absl::InvalidArgumentError(
          absl::StrCat(path, ": fused bytes both inline and in a sidecar"));
    }
    TAILOR_RETURN_IF_ERROR(
        ReadFused(index, *entry.fused_file_bytes, entry.fused_file_sha256,
                  [](absl::string_view) { return absl::OkStatus(); }));
  }
  return entry;
}

absl::StatusOr<uint64_t> JournalBytes(const std::string& dir) {
  TAILOR_ASSIGN_OR_RETURN(std::vector<std::string> names, ListDirectory(dir));
  uint64_t total = 0;
  for (const std::string& name : names) {
    struct stat st;
    if (::stat(JoinPath(dir, name).c_str(), &st) == 0 && S_ISREG(st.st_mode)) {
      total += static_cast<uint64_t>(st.st_size);
    }
  }
  return total;
}

}  // namespace tailor
