#include "fusion/journal.h"

#include <sys/stat.h>
#include <sys/statvfs.h>

#include <map>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "io/safetensors_header.h"
#include "util/file_util.h"
#include "util/json_util.h"
#include "util/sha256.h"
#include "util/status_macros.h"

namespace tailor {
namespace {

constexpr char kManifest[] = "manifest.json";
constexpr char kEntrySuffix[] = ".safetensors";
constexpr char kFused[] = "fused";
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

std::string FusionJournal::EntryPath(int64_t index) const {
  return JoinPath(dir_, absl::StrFormat("%08d%s", index, kEntrySuffix));
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
  const nlohmann::json record = {{"report", entry.report},
                                 {"warnings", entry.warnings},
                                 {"errors", errors},
                                 {"patches", patches}};
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
