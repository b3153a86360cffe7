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

using shard_bundle_internal::kManifestName;
using shard_bundle_internal::kMaxManifestBytes;

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

namespace shard_bundle_internal {

absl::Status FillShardBundle(const std::string& staging, int index, int count,
                             const std::string& plan_sha256,
                             const FusionJournal& journal,
                             const std::vector<ShardBundleItem>& items) {
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
  return FsyncDirectory(staging);
}

}  // namespace shard_bundle_internal

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
  TAILOR_RETURN_IF_ERROR(shard_bundle_internal::FillShardBundle(
      staging, index, count, plan_sha256, journal, items));
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

namespace shard_bundle_internal {

absl::StatusOr<std::vector<FoundBundle>> CheckShardManifests(
    const std::string& dir, const std::string& shown_root, int count,
    const std::string& plan_sha256,
    const std::vector<std::vector<ShardBundleItem>>& expected) {
  auto shown_as = [&](const std::string& name) {
    return shown_root.empty() ? JoinPath(dir, name)
                              : absl::StrCat(shown_root, name);
  };
  TAILOR_ASSIGN_OR_RETURN(std::vector<std::string> names, ListDirectory(dir));
  std::map<int, FoundBundle> found;
  std::string misnamed;  // reported after duplicates
  for (const std::string& name : names) {
    if (!absl::StartsWith(name, "shard-")) continue;
    const std::string path = JoinPath(dir, name);
    const std::string shown = shown_as(name);
    absl::StatusOr<std::string> text =
        ReadFileToString(JoinPath(path, kManifestName), kMaxManifestBytes);
    if (!text.ok()) {
      return absl::FailedPreconditionError(absl::StrCat(
          "bundle ", shown, " is incomplete or foreign: no ", "readable ",
          kManifestName,
          shown_root.empty() ? absl::StrCat(" (", text.status().message(), ")")
                             : std::string()));
    }
    nlohmann::json m = nlohmann::json::parse(*text, nullptr, false);
    if (!m.is_object() || m.value("format", "") != kShardBundleFormat ||
        !m.contains("shard") || !m["shard"].is_number_integer() ||
        !m.contains("shards") || !m["shards"].is_number_integer() ||
        !m.contains("items") || !m["items"].is_array()) {
      return absl::FailedPreconditionError(
          absl::StrCat("bundle ", shown, ": ", kManifestName, " is not a ",
                       kShardBundleFormat, " manifest"));
    }
    const int shard = m["shard"].get<int>();
    const int shards = m["shards"].get<int>();
    if (shards != count) {
      return absl::FailedPreconditionError(
          absl::StrCat("foreign bundle ", shown, ": written for ", shards,
                       " shards, assembling ", count));
    }
    if (m.value("plan_sha256", "") != plan_sha256) {
      return absl::FailedPreconditionError(absl::StrCat(
          "foreign bundle ", shown,
          ": it belongs to another plan (plan_sha256 ",
          m.value("plan_sha256", "?").substr(0, 64), ", this job's ",
          plan_sha256,
          "): another spec, other inputs or another tailorctl version"));
    }
    if (shard < 0 || shard >= count) {
      return absl::FailedPreconditionError(
          absl::StrCat("foreign bundle ", shown, ": shard ", shard,
                       " is not in 0..", count - 1));
    }
    if (auto it = found.find(shard); it != found.end()) {
      return absl::AlreadyExistsError(
          absl::StrCat("shard ", shard, " of ", count,
                       " is duplicated: ", it->second.shown, " and ", shown));
    }
    if (name != ShardBundleName(shard, count) && misnamed.empty()) {
      misnamed = absl::StrCat("bundle ", shown, " holds shard ", shard, " of ",
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
          absl::StrCat("foreign bundle ", shown, ": its tensors are not shard ",
                       shard, "'s share of this plan"));
    }
    for (const nlohmann::json& item : items) {
      for (const auto& [file, sha] : item["files"].items()) {
        if (file.empty() || file == "." || file == ".." ||
            file == kManifestName ||
            file.find_first_of(std::string("/\0", 2)) != std::string::npos ||
            !sha.is_string()) {
          return absl::FailedPreconditionError(
              absl::StrCat("bundle ", shown, ": bad file entry in manifest"));
        }
      }
    }
    found.emplace(shard, FoundBundle{path, shown, std::move(m)});
  }
  if (!misnamed.empty()) return absl::FailedPreconditionError(misnamed);
  std::vector<FoundBundle> bundles;
  for (int s = 0; s < count; ++s) {
    auto it = found.find(s);
    if (it == found.end()) {
      return absl::NotFoundError(
          absl::StrCat("shard ", s, " of ", count, " is missing: no bundle ",
                       shown_as(ShardBundleName(s, count)),
                       " (run `tailorctl fuse --local --shard ", s,
                       " --shards ", count, " ...` for it)"));
    }
    bundles.push_back(std::move(it->second));
  }
  return bundles;
}

std::vector<std::pair<std::string, std::string>> ManifestFiles(
    const FoundBundle& bundle) {
  std::vector<std::pair<std::string, std::string>> files;
  for (const nlohmann::json& item : bundle.manifest["items"]) {
    for (const auto& [file, sha] : item["files"].items()) {
      files.emplace_back(file, sha.get<std::string>());
    }
  }
  return files;
}

absl::Status VerifyShardFiles(const FoundBundle& bundle) {
  for (const auto& [file, sha] : ManifestFiles(bundle)) {
    absl::StatusOr<std::string> got = FileSha256(JoinPath(bundle.path, file));
    if (!got.ok() || *got != sha) {
      return absl::DataLossError(absl::StrCat(
          "bundle ", bundle.shown, ": ", file,
          got.ok() ? " does not match its sha256 in the manifest"
                   : absl::StrCat(" is unreadable: ", got.status().message())));
    }
  }
  return absl::OkStatus();
}

}  // namespace shard_bundle_internal

absl::StatusOr<std::vector<std::unique_ptr<FusionJournal>>> OpenShardBundles(
    const std::string& dir, int count, const std::string& plan_sha256,
    const std::vector<std::vector<ShardBundleItem>>& expected) {
  using shard_bundle_internal::CheckShardManifests;
  using shard_bundle_internal::FoundBundle;
  using shard_bundle_internal::VerifyShardFiles;
  if (!IsDirectory(dir)) {
    return absl::NotFoundError(
        absl::StrCat("--from: ", dir, " is not a directory"));
  }
  TAILOR_ASSIGN_OR_RETURN(
      std::vector<FoundBundle> found,
      CheckShardManifests(dir, "", count, plan_sha256, expected));
  std::vector<std::unique_ptr<FusionJournal>> bundles;
  for (const FoundBundle& bundle : found) {
    TAILOR_RETURN_IF_ERROR(VerifyShardFiles(bundle));
    bundles.push_back(FusionJournal::OpenForReading(bundle.path));
  }
  return bundles;
}

}  // namespace tailor
