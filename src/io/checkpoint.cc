#include "io/checkpoint.h"

#include <algorithm>
#include <map>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "io/tensor_convert.h"
#include "storage/read_local_file.h"
#include "util/file_util.h"
#include "util/json_util.h"
#include "util/quote.h"
#include "util/status_macros.h"

namespace tailor {
namespace {

// Index files of real 7B-70B checkpoints are well under 1 MB.
constexpr uint64_t kMaxIndexBytes = 64ull << 20;

absl::Status IndexError(absl::string_view index_path,
                        absl::string_view message) {
  return absl::InvalidArgumentError(absl::StrCat(index_path, ": ", message));
}

// A shard reference from an index must stay inside the checkpoint directory.
absl::Status CheckShardName(absl::string_view index_path,
                            absl::string_view tensor, absl::string_view shard) {
  if (shard.empty() || shard == "." || shard == ".." ||
      absl::StrContains(shard, '/') || absl::StrContains(shard, '\\') ||
      absl::StrContains(shard, '\0')) {
    return IndexError(
        index_path,
        absl::StrCat("weight_map[", Quote(tensor), "] = ", Quote(shard),
                     " is not a plain file name in the checkpoint directory"));
  }
  return absl::OkStatus();
}

struct ParsedIndex {
  std::map<std::string, std::string> weight_map;  // tensor -> shard
  std::optional<uint64_t> total_size;
};

// Reads the index beneath its allowed root when there is a resolver.
absl::StatusOr<ParsedIndex> ParseIndex(const std::string& index_path,
                                       const UriResolver* resolver) {
  TAILOR_ASSIGN_OR_RETURN(const std::string text,
                          ReadLocalFile(resolver, index_path, kMaxIndexBytes));
  TAILOR_ASSIGN_OR_RETURN(nlohmann::json json,
                          ParseJsonStrict(text, index_path));
  if (!json.is_object()) {
    return IndexError(index_path, "the index must be a JSON object");
  }
  auto wm = json.find("weight_map");
  if (wm == json.end() || !wm->is_object()) {
    return IndexError(
        index_path, "missing 'weight_map' object (tensor name -> shard file)");
  }
  ParsedIndex index;
  for (auto it = wm->begin(); it != wm->end(); ++it) {
    if (!it.value().is_string()) {
      return IndexError(index_path, absl::StrCat("weight_map[", Quote(it.key()),
                                                 "] must be a string"));
    }
    const std::string& shard = it.value().get_ref<const std::string&>();
    TAILOR_RETURN_IF_ERROR(CheckShardName(index_path, it.key(), shard));
    index.weight_map.emplace(it.key(), shard);
  }
  auto md = json.find("metadata");
  if (md != json.end()) {
    if (!md->is_object()) {
      return IndexError(index_path, "'metadata' must be an object");
    }
    auto ts = md->find("total_size");
    if (ts != md->end()) {
      if (!ts->is_number_unsigned() && !ts->is_number_integer()) {
        return IndexError(index_path,
                          "metadata.total_size must be a non-negative integer");
      }
      if (ts->is_number_integer() && ts->get<int64_t>() < 0) {
        return IndexError(index_path, "metadata.total_size is negative");
      }
      index.total_size = ts->get<uint64_t>();
    }
  }
  return index;
}

// File-system questions, through the resolver when there is one (it answers
// for remote paths too: storage/uri_resolver.h).
bool IsDir(const std::string& path, const UriResolver* resolver) {
  return resolver != nullptr ? resolver->PathIsDirectory(path)
                             : IsDirectory(path);
}
bool IsFile(const std::string& path, const UriResolver* resolver) {
  return resolver != nullptr ? resolver->PathIsRegularFile(path)
                             : IsRegularFile(path);
}
bool Exists(const std::string& path, const UriResolver* resolver) {
  // (A local FIFO or device exists too: opening it gives the clear error.)
  return resolver != nullptr && IsRemoteUri(path)
             ? resolver->PathIsDirectory(path) ||
                   resolver->PathIsRegularFile(path)
             : PathExists(path);
}
absl::StatusOr<std::vector<std::string>> List(const std::string& dir,
                                              const UriResolver* resolver) {
  return resolver != nullptr ? resolver->ListNames(dir) : ListDirectory(dir);
}

// What a directory holds, for the error when it is not a checkpoint.
absl::Status NotACheckpoint(const std::string& dir,
                            const UriResolver* resolver) {
  absl::StatusOr<std::vector<std::string>> names = List(dir, resolver);
  if (!names.ok()) return names.status();
  if (Exists(JoinPath(dir, "adapter_config.json"), resolver)) {
    return absl::InvalidArgumentError(absl::StrCat(
        dir,
        " is a PEFT adapter directory (adapter_config.json): open it as a "
        "fine-tuned checkpoint over its base model"));
  }
  std::vector<std::string> safetensors;
  for (const std::string& n : *names) {
    if (absl::EndsWith(n, ".safetensors")) safetensors.push_back(n);
    TAILOR_RETURN_IF_ERROR(absl::EndsWith(n, ".index.json")
                               ? absl::OkStatus()
                               : RefuseIfPickleName(JoinPath(dir, n)));
  }
  if (!safetensors.empty()) {
    return absl::InvalidArgumentError(absl::StrCat(
        dir, " has no ", kIndexFileName, " or ", kSingleFileName,
        " and several .safetensors files (", absl::StrJoin(safetensors, ", "),
        "); name the file to open"));
  }
  return absl::NotFoundError(
      absl::StrCat(dir, " holds no ", kIndexFileName, " or ", kSingleFileName));
}

}  // namespace

absl::StatusOr<std::unique_ptr<Checkpoint>> Checkpoint::Open(
    const std::string& path, const Options& options) {
  std::unique_ptr<Checkpoint> ckpt(new Checkpoint());
  ckpt->path_ = path;
  std::string index_path;
  std::string single_path;
  const UriResolver* resolver = options.resolver;
  if (IsRemoteUri(path) && resolver == nullptr) {
    return absl::InvalidArgumentError(
        absl::StrCat(path, ": a remote checkpoint needs a resolver"));
  }
  if (IsDir(path, resolver)) {
    ckpt->directory_ = path;
    if (IsFile(JoinPath(path, kIndexFileName), resolver)) {
      index_path = JoinPath(path, kIndexFileName);
    } else if (IsFile(JoinPath(path, kSingleFileName), resolver)) {
      single_path = JoinPath(path, kSingleFileName);
    } else {
      TAILOR_ASSIGN_OR_RETURN(std::vector<std::string> names,
                              List(path, resolver));
      std::vector<std::string> found;
      for (const std::string& n : names) {
        if (absl::EndsWith(n, ".safetensors")) found.push_back(n);
      }
      if (found.size() != 1 ||
          Exists(JoinPath(path, "adapter_config.json"), resolver)) {
        return NotACheckpoint(path, resolver);
      }
      single_path = JoinPath(path, found[0]);
    }
  } else if (Exists(path, resolver)) {
    ckpt->directory_ = Dirname(path);
    if (absl::EndsWith(path, ".index.json")) {
      index_path = path;
    } else {
      single_path = path;
    }
  } else {
    return absl::NotFoundError(absl::StrCat("checkpoint ", path, " not found"));
  }

  auto open_file = [&](const std::string& file_path)
      -> absl::StatusOr<std::unique_ptr<SafetensorsFile>> {
    if (options.resolver != nullptr) {
      // Opened beneath its allowed root (issue #14 point 7): a symlink
      // swapped in after the check cannot lead outside it. A remote shard
      // is checked against the remote roots and read with ranged GETs (or
      // through the read cache).
      TAILOR_ASSIGN_OR_RETURN(const std::string canonical,
                              options.resolver->CheckLocalPath(file_path));
      TAILOR_RETURN_IF_ERROR(RefuseIfPickleName(file_path));
      TAILOR_ASSIGN_OR_RETURN(
          std::unique_ptr<ByteSource> source,
          options.resolver->OpenSource(canonical, file_path));
      return SafetensorsFile::Open(std::move(source), file_path);
    }
    return SafetensorsFile::Open(file_path);
  };

  // name -> file index, filled from each file's header.
  std::map<std::string, size_t> owner;
  if (!index_path.empty()) {
    ckpt->sharded_ = true;
    TAILOR_ASSIGN_OR_RETURN(ParsedIndex index,
                            ParseIndex(index_path, options.resolver));
    ckpt->index_total_size_ = index.total_size;
    std::vector<std::string> shard_names;
    for (const auto& [tensor, shard] : index.weight_map) {
      shard_names.push_back(shard);
    }
    std::sort(shard_names.begin(), shard_names.end());
    shard_names.erase(std::unique(shard_names.begin(), shard_names.end()),
                      shard_names.end());
    for (const std::string& shard : shard_names) {
      const std::string shard_path = JoinPath(ckpt->directory_, shard);
      TAILOR_RETURN_IF_ERROR(RefuseIfPickleName(shard_path));
      if (!Exists(shard_path, resolver)) {
        return absl::NotFoundError(absl::StrCat(
            index_path, ": shard ", Quote(shard),
            " named in weight_map (e.g. for ",
            Quote(
                std::find_if(index.weight_map.begin(), index.weight_map.end(),
                             [&](const auto& kv) { return kv.second == shard; })
                    ->first),
            ") does not exist"));
      }
      TAILOR_ASSIGN_OR_RETURN(auto file, open_file(shard_path));
      ckpt->files_.push_back(std::move(file));
    }
    for (size_t i = 0; i < ckpt->files_.size(); ++i) {
      for (const TensorEntry& e : ckpt->files_[i]->header().tensors) {
        auto [it, inserted] = owner.emplace(e.name, i);
        if (!inserted) {
          return absl::InvalidArgumentError(absl::StrCat(
              index_path, ": tensor ", Quote(e.name),
              " is stored in two shards, ", Quote(shard_names[it->second]),
              " and ", Quote(shard_names[i])));
        }
      }
    }
    for (const auto& [tensor, shard] : index.weight_map) {
      auto it = owner.find(tensor);
      if (it == owner.end() || shard_names[it->second] != shard) {
        return absl::InvalidArgumentError(absl::StrCat(
            index_path, ": weight_map names tensor ", Quote(tensor),
            " in shard ", Quote(shard), " but that shard does not hold it"));
      }
    }
    for (const auto& [tensor, file_index] : owner) {
      if (index.weight_map.count(tensor) == 0) {
        return absl::InvalidArgumentError(
            absl::StrCat(index_path, ": shard ", Quote(shard_names[file_index]),
                         " holds tensor ", Quote(tensor),
                         " which weight_map does not list"));
      }
    }
  } else {
    TAILOR_ASSIGN_OR_RETURN(auto file, open_file(single_path));
    for (const TensorEntry& e : file->header().tensors)
      owner.emplace(e.name, 0);
    ckpt->files_.push_back(std::move(file));
  }

  for (const auto& [name, file_index] : owner) {
    const SafetensorsFile* file = ckpt->files_[file_index].get();
    const TensorEntry* entry = file->header().Find(name);
    TensorInfo info;
    info.name = name;
    info.dtype = entry->dtype;
    info.shape = entry->shape;
    info.numel = entry->numel;
    info.nbytes = entry->nbytes();
    info.file = Basename(file->path());
    ckpt->tensors_.push_back(std::move(info));
    ckpt->locations_.push_back(Location{file, entry});
  }
  if (ckpt->index_total_size_.has_value() &&
      *ckpt->index_total_size_ != ckpt->TotalBytes()) {
    ckpt->warnings_.push_back(absl::StrCat(
        index_path, ": metadata.total_size is ", *ckpt->index_total_size_,
        " but the shards hold ", ckpt->TotalBytes(), " tensor bytes"));
  }
  return ckpt;
}

absl::StatusOr<Checkpoint::Location> Checkpoint::Locate(
    absl::string_view name) const {
  const TensorInfo* info = Find(name);
  if (info == nullptr) {
    return absl::NotFoundError(
        absl::StrCat(path_, ": no tensor named ", Quote(name)));
  }
  return locations_[static_cast<size_t>(info - tensors_.data())];
}

absl::StatusOr<at::Tensor> Checkpoint::Read(absl::string_view name,
                                            const ReadOptions& options) const {
  TAILOR_ASSIGN_OR_RETURN(Location loc, Locate(name));
  return ReadTensor(*loc.file, *loc.entry, options);
}

absl::StatusOr<std::string> Checkpoint::ReadRaw(absl::string_view name) const {
  TAILOR_ASSIGN_OR_RETURN(Location loc, Locate(name));
  std::string bytes(loc.entry->nbytes(), '\0');
  TAILOR_RETURN_IF_ERROR(loc.file->ReadRaw(*loc.entry, bytes.data()));
  return bytes;
}

absl::Status Checkpoint::ReadRawRange(absl::string_view name, uint64_t offset,
                                      uint64_t length, void* buffer) const {
  TAILOR_ASSIGN_OR_RETURN(Location loc, Locate(name));
  return loc.file->ReadRawRange(*loc.entry, offset, length, buffer);
}

absl::StatusOr<std::unique_ptr<Checkpoint>> OpenFormattedFile(
    const std::string& path, const Checkpoint::Options& options,
    absl::string_view kind, absl::string_view format) {
  auto error = [&](absl::string_view message) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": ", message));
  };
  if (IsDir(path, options.resolver)) {
    return error(absl::StrCat("is a directory; a ", kind,
                              " is a single .safetensors file"));
  }
  if (absl::EndsWith(path, ".index.json")) {
    return error(absl::StrCat("is a checkpoint index; a ", kind,
                              " is a single .safetensors file"));
  }
  TAILOR_ASSIGN_OR_RETURN(std::unique_ptr<Checkpoint> file,
                          Checkpoint::Open(path, options));
  if (file->sharded() || file->files().size() != 1) {
    return error(absl::StrCat("a ", kind, " is a single .safetensors file"));
  }
  const std::map<std::string, std::string>& md =
      file->files()[0]->header().metadata;
  auto tag = md.find("format");
  if (tag == md.end() || tag->second != format) {
    return error(absl::StrCat(
        "not a ", kind, ": __metadata__ format is ",
        tag == md.end() ? "missing" : absl::StrCat(Quote(tag->second)),
        ", expected ", Quote(format)));
  }
  return file;
}

}  // namespace tailor
