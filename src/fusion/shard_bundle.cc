#include "fusion/shard_bundle.h"

#include <errno.h>
#include <unistd.h>

#include <map>
#include <utility>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "fusion/shard_plan.h"
#include "nlohmann/json.hpp"
#include "util/file_util.h"
#include "util/sha256.h"
#include "util/status_macros.h"

namespace tailor {
namespace {

constexpr char kManifestName[] = "manifest.json";
constexpr uint64_t kMaxManifestBytes = 64 << 20;

absl::StatusOr<std::string> FileSha256(const std::string& path) {
  TAILOR_ASSIGN_OR_RETURN(ScopedFd fd, OpenForRead(path));
  Sha256 sha;
  std::string buffer(1 << 20, '\0');
  for (;;) {
    const ssize_t n = ::read(fd.get(), buffer.data(), buffer.size());
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      return absl::InternalError(
          absl::StrCat("reading ", path, ": ", std::strerror(errno)));
    }
    if (n == 0) break;
    sha.Update(absl::string_view(buffer.data(), static_cast<size_t>(n)));
  }
  return sha.FinalHex();
}

// A hard link where the file system allows, a durable copy otherwise.
absl::Status LinkOrCopy(const std::string& from, const std::string& to) {
  if (::link(from.c_str(), to.c_str()) == 0) return absl::OkStatus();
  return CopyFileDurably(from, to);
}

}  // namespace

absl::Status WriteShardBundle(const std::string& dir, int index, int count,
                              const std::string& plan_sha256,
                              const FusionJournal& journal,
                              const std::vector<ShardBundleItem>& items) {
  const std::string name = ShardBundleName(index, count);
  const std::string final_dir = JoinPath(dir, name);
  const std::string staging = JoinPath(dir, absl::StrCat(".staging-", name));
  const std::string old = JoinPath(dir, absl::StrCat(".old-", name));
  TAILOR_RETURN_IF_ERROR(RemoveAll(staging));
  TAILOR_RETURN_IF_ERROR(MakeDirectories(staging));
  nlohmann::json listed = nlohmann::json::array();
  for (const ShardBundleItem& item : items) {
    if (!journal.Has(item.index)) {
      return absl::FailedPreconditionError(
          absl::StrCat("shard ", index, " of ", count, ": tensor ", item.index,
                       " ('", item.name, "') was not recorded in its journal ",
                       journal.dir(), " (is the --shard-dir volume full?)"));
    }
    nlohmann::json files = nlohmann::json::object();
    for (const std::string& from :
         {journal.EntryPath(item.index), journal.FusedPath(item.index)}) {
      if (!IsRegularFile(from)) continue;  // no sidecar
      const std::string base = Basename(from);
      const std::string to = JoinPath(staging, base);
      TAILOR_RETURN_IF_ERROR(LinkOrCopy(from, to));
      TAILOR_ASSIGN_OR_RETURN(files[base], FileSha256(to));
    }
    listed.push_back(
        {{"index", item.index}, {"name", item.name}, {"files", files}});
  }
  const nlohmann::json manifest = {{"format", kShardBundleFormat},
                                   {"plan_sha256", plan_sha256},
                                   {"shard", index},
                                   {"shards", count},
                                   {"items", listed}};
  TAILOR_RETURN_IF_ERROR(WriteFileAtomically(JoinPath(staging, kManifestName),
                                             manifest.dump(2) + "\n"));
  TAILOR_RETURN_IF_ERROR(FsyncDirectory(staging));
  // Replacing an earlier bundle of this shard: moved aside, then removed.
  TAILOR_RETURN_IF_ERROR(RemoveAll(old));
  if (PathExists(final_dir) && ::rename(final_dir.c_str(), old.c_str()) != 0) {
    return absl::InternalError(absl::StrCat("renaming ", final_dir, " to ", old,
                                            ": ", std::strerror(errno)));
  }
  if (::rename(staging.c_str(), final_dir.c_str()) != 0) {
    return absl::InternalError(absl::StrCat(
        "renaming ", staging, " to ", final_dir, ": ", std::strerror(errno)));
  }
  TAILOR_RETURN_IF_ERROR(FsyncDirectory(dir));
  return RemoveAll(old);
}

absl::StatusOr<std::vector<std::unique_ptr<FusionJournal>>> OpenShardBundles(
    const std::string& dir, int count, const std::string& plan_sha256,
    const std::vector<std::vector<ShardBundleItem>>& expected) {
  if (!IsDirectory(dir)) {
    return absl::NotFoundError(
        absl::StrCat("--from: ", dir, " is not a directory"));
  }
  TAILOR_ASSIGN_OR_RETURN(std::vector<std::string> names, ListDirectory(dir));
  std::map<int, std::string> found;  // shard -> bundle directory
  std::string misnamed;              // reported after duplicates
  for (const std::string& name : names) {
    if (!absl::StartsWith(name, "shard-")) continue;
    const std::string path = JoinPath(dir, name);
    absl::StatusOr<std::string> text =
        ReadFileToString(JoinPath(path, kManifestName), kMaxManifestBytes);
    if (!text.ok()) {
      return absl::FailedPreconditionError(absl::StrCat(
          "bundle ", path, " is incomplete or foreign: no readable ",
          kManifestName, " (", text.status().message(), ")"));
    }
    const nlohmann::json m = nlohmann::json::parse(*text, nullptr, false);
    if (!m.is_object() || m.value("format", "") != kShardBundleFormat ||
        !m.contains("shard") || !m["shard"].is_number_integer() ||
        !m.contains("shards") || !m["shards"].is_number_integer() ||
        !m.contains("items") || !m["items"].is_array()) {
      return absl::FailedPreconditionError(
          absl::StrCat("bundle ", path, ": ", kManifestName, " is not a ",
                       kShardBundleFormat, " manifest"));
    }
    const int shard = m["shard"].get<int>();
    const int shards = m["shards"].get<int>();
    if (shards != count) {
      return absl::FailedPreconditionError(
          absl::StrCat("foreign bundle ", path, ": written for ", shards,
                       " shards, assembling ", count));
    }
    if (m.value("plan_sha256", "") != plan_sha256) {
      return absl::FailedPreconditionError(absl::StrCat(
          "foreign bundle ", path, ": it belongs to another plan (plan_sha256 ",
          m.value("plan_sha256", "?").substr(0, 64), ", this job's ",
          plan_sha256,
          "): another spec, other inputs or another tailorctl version"));
    }
    if (shard < 0 || shard >= count) {
      return absl::FailedPreconditionError(
          absl::StrCat("foreign bundle ", path, ": shard ", shard,
                       " is not in 0..", count - 1));
    }
    if (auto [it, fresh] = found.emplace(shard, path); !fresh) {
      return absl::AlreadyExistsError(
          absl::StrCat("shard ", shard, " of ", count,
                       " is duplicated: ", it->second, " and ", path));
    }
    if (name != ShardBundleName(shard, count) && misnamed.empty()) {
      misnamed = absl::StrCat("bundle ", path, " holds shard ", shard, " of ",
                              count, " under another name (expected ",
                              ShardBundleName(shard, count), ")");
    }
    const std::vector<ShardBundleItem>& want = expected[shard];
    const nlohmann::json& items = m["items"];
    bool same = items.size() == want.size();
    for (size_t i = 0; same && i < want.size(); ++i) {
      same = items[i].is_object() &&
             items[i].value("index", int64_t{-1}) == want[i].index &&
             items[i].value("name", "") == want[i].name &&
             items[i].contains("files") && items[i]["files"].is_object();
    }
    if (!same) {
      return absl::FailedPreconditionError(
          absl::StrCat("foreign bundle ", path, ": its tensors are not shard ",
                       shard, "'s share of this plan"));
    }
    for (const nlohmann::json& item : items) {
      for (const auto& [file, sha] : item["files"].items()) {
        if (file.find('/') != std::string::npos || !sha.is_string()) {
          return absl::FailedPreconditionError(
              absl::StrCat("bundle ", path, ": bad file entry in manifest"));
        }
        const std::string p = JoinPath(path, file);
        absl::StatusOr<std::string> got = FileSha256(p);
        if (!got.ok() || *got != sha.get<std::string>()) {
          return absl::DataLossError(absl::StrCat(
              "bundle ", path, ": ", file,
              got.ok()
                  ? " does not match its sha256 in the manifest"
                  : absl::StrCat(" is unreadable: ", got.status().message())));
        }
      }
    }
  }
  if (!misnamed.empty()) return absl::FailedPreconditionError(misnamed);
  std::vector<std::unique_ptr<FusionJournal>> bundles;
  for (int s = 0; s < count; ++s) {
    auto it = found.find(s);
    if (it == found.end()) {
      return absl::NotFoundError(
          absl::StrCat("shard ", s, " of ", count, " is missing: no bundle ",
                       ShardBundleDir(dir, s, count),
                       " (run `tailorctl fuse --local --shard ", s,
                       " --shards ", count, " ...` for it)"));
    }
    bundles.push_back(FusionJournal::OpenForReading(it->second));
  }
  return bundles;
}

}  // namespace tailor
