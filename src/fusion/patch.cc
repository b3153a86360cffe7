#include "fusion/patch.h"

#include <ATen/ATen.h>
#include <fcntl.h>
#include <sys/file.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstring>
#include <limits>
#include <map>
#include <optional>
#include <utility>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "io/safetensors_file.h"
#include "io/safetensors_header.h"
#include "util/json_util.h"
#include "util/quote.h"
#include "util/sha256.h"
#include "util/status_macros.h"
#include "util/torch_status.h"

namespace tailor {
namespace {

constexpr char kMaskSuffix[] = ".mask";
constexpr char kValuesSuffix[] = ".values";
// Spool -> output copies go through a buffer of this size.
constexpr size_t kCopyChunkBytes = 8u << 20;

// The safetensors header text for `tensors` (given in data order, offsets
// relative to the data section): "__metadata__" first, then the tensors in
// that order, padded with spaces to a multiple of 8 so the data section
// starts aligned. Same layout as the checkpoint writer's.
// Packs a bool mask, row-major: flat index i -> byte i / 8, bit i % 8 (LSB
// first); pad bits are zero. Returns U8 [ceil(n / 8)] on the CPU.
absl::StatusOr<at::Tensor> PackBits(const at::Tensor& mask,
                                    absl::string_view label) {
  return CatchTorch(label, [&]() -> at::Tensor {
    const at::Tensor flat = mask.reshape({-1}).to(at::kCPU).contiguous();
    const int64_t n = flat.numel();
    at::Tensor packed = at::empty({(n + 7) / 8}, at::kByte);
    // A bool tensor holds one byte per entry, 0 or 1.
    const uint8_t* src =
        reinterpret_cast<const uint8_t*>(flat.data_ptr<bool>());
    uint8_t* dst = packed.data_ptr<uint8_t>();
    const int64_t full = n / 8;
    for (int64_t j = 0; j < full; ++j) {
      const uint8_t* s = src + 8 * j;
      dst[j] = static_cast<uint8_t>((s[0] != 0) | (s[1] != 0) << 1 |
                                    (s[2] != 0) << 2 | (s[3] != 0) << 3 |
                                    (s[4] != 0) << 4 | (s[5] != 0) << 5 |
                                    (s[6] != 0) << 6 | (s[7] != 0) << 7);
    }
    if (n % 8 != 0) {
      uint8_t b = 0;
      for (int64_t i = 8 * full; i < n; ++i) {
        b |= static_cast<uint8_t>((src[i] != 0) << (i % 8));
      }
      dst[full] = b;
    }
    return packed;
  });
}

// Unpacks `packed` (U8 [ceil(n / 8)]) into a bool [n] tensor and counts the
// set bits; INVALID_ARGUMENT if a pad bit is set.
absl::StatusOr<at::Tensor> UnpackBits(const at::Tensor& packed, int64_t n,
                                      int64_t* popcount,
                                      absl::string_view label) {
  if (packed.scalar_type() != at::kByte || packed.dim() != 1 ||
      packed.numel() != (n + 7) / 8) {
    return absl::InvalidArgumentError(
        absl::StrCat(label, ": mask must be U8 [", (n + 7) / 8, "]"));
  }
  TAILOR_ASSIGN_OR_RETURN(at::Tensor out, CatchTorch(label, [&] {
                            return at::empty({n}, at::kBool);
                          }));
  const at::Tensor src_t = packed.contiguous();
  const uint8_t* src = src_t.data_ptr<uint8_t>();
  uint8_t* dst = reinterpret_cast<uint8_t*>(out.data_ptr<bool>());
  int64_t count = 0;
  const int64_t full = n / 8;
  for (int64_t j = 0; j < full; ++j) {
    const uint8_t b = src[j];
    count += __builtin_popcount(b);
    uint8_t* d = dst + 8 * j;
    for (int k = 0; k < 8; ++k) d[k] = (b >> k) & 1;
  }
  if (n % 8 != 0) {
    const uint8_t b = src[full];
    const int used = static_cast<int>(n % 8);
    if ((b >> used) != 0) {
      return absl::InvalidArgumentError(absl::StrCat(
          label, ": pad bits of the last mask byte (bits ", used,
          "..7 of byte ", full, " = 0x", absl::Hex(b, absl::kZeroPad2),
          ") must be zero; the mask covers ", n, " entries"));
    }
    count += __builtin_popcount(b);
    for (int k = 0; k < used; ++k) dst[8 * full + k] = (b >> k) & 1;
  }
  *popcount = count;
  return out;
}

// Product of `shape` with overflow checks; nullopt on overflow or a negative
// dimension.
std::optional<int64_t> Numel(const std::vector<int64_t>& shape) {
  int64_t n = 1;
  for (int64_t d : shape) {
    if (d < 0) return std::nullopt;
    if (d != 0 && n > std::numeric_limits<int64_t>::max() / d) {
      return std::nullopt;
    }
    n *= d;
  }
  return n;
}

}  // namespace

// --- Fusion arithmetic -------------------------------------------------------

at::Tensor FuseTensor(const at::Tensor& pre, const at::Tensor& mask,
                      const at::Tensor& values) {
  at::Tensor flat = pre.to(at::kFloat).reshape({-1}).clone();
  const at::Tensor idx =
      mask.to(flat.device()).reshape({-1}).nonzero().reshape({-1});
  const at::Tensor add = values.to(flat.device(), at::kFloat).reshape({-1});
  flat.index_put_({idx}, flat.index({idx}) + add);
  return flat.reshape(pre.sizes());
}

at::Tensor KeptValues(const at::Tensor& mask, const at::Tensor& delta) {
  return delta.reshape({-1})
      .masked_select(mask.to(delta.device(), at::kBool).reshape({-1}))
      .to(at::kFloat)
      .contiguous();
}

// --- PatchWriter -------------------------------------------------------------

struct PatchWriter::Entry {
  std::string name;  // the weight W
  std::vector<int64_t> shape;
  uint64_t mask_offset = 0;  // in the spool
  uint64_t mask_bytes = 0;
  uint64_t values_offset = 0;
  uint64_t values_bytes = 0;
};

absl::StatusOr<std::unique_ptr<PatchWriter>> PatchWriter::Create(
    const std::string& path, bool overwrite) {
  if (path.empty()) {
    return absl::InvalidArgumentError("patch writer: empty output path");
  }
  if (IsDirectory(path)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "patch output ", path, " is a directory; a patch is a single file"));
  }
  std::unique_ptr<PatchWriter> w(new PatchWriter());
  TAILOR_ASSIGN_OR_RETURN(
      w->staged_,
      StagedOutput::Create(path, StagedOutput::Kind::kFile, overwrite));
  w->path_ = w->staged_->path();
  w->spool_name_ = StagingName(Basename(w->path_), "spool");
  w->spool_path_ = JoinPath(Dirname(w->path_), w->spool_name_);
  const int fd =
      ::openat(w->staged_->parent_fd(), w->spool_name_.c_str(),
               O_RDWR | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
  if (fd < 0) {
    return ErrnoToStatus(errno, absl::StrCat("create ", w->spool_path_));
  }
  w->spool_ = ScopedFd(fd);
  (void)::flock(fd, LOCK_EX | LOCK_NB);  // live (see RemoveStaleStaging)
  return w;
}

PatchWriter::~PatchWriter() { RemoveSpool(); }

void PatchWriter::RemoveSpool() {
  if (!spool_.valid()) return;
  spool_ = ScopedFd();
  ::unlinkat(staged_->parent_fd(), spool_name_.c_str(), 0);
}

absl::StatusOr<PackedPatchEntry> PatchWriter::Pack(const at::Tensor& mask,
                                                   const at::Tensor& delta,
                                                   absl::string_view label) {
  if (!mask.defined() || mask.scalar_type() != at::kBool) {
    return absl::InvalidArgumentError(
        absl::StrCat(label, ": mask must be a bool tensor"));
  }
  if (!delta.defined() || !delta.is_floating_point() ||
      delta.sizes() != mask.sizes()) {
    return absl::InvalidArgumentError(absl::StrCat(
        label, ": delta must be a floating tensor shaped like the mask ",
        c10::str(mask.sizes())));
  }
  TAILOR_ASSIGN_OR_RETURN(at::Tensor packed, PackBits(mask, label));
  TAILOR_ASSIGN_OR_RETURN(
      at::Tensor values, CatchTorch(label, [&] {
        return KeptValues(mask, delta).to(at::kCPU).contiguous();
      }));
  PackedPatchEntry out;
  out.shape = mask.sizes().vec();
  out.mask.assign(static_cast<const char*>(packed.data_ptr()),
                  static_cast<size_t>(packed.numel()));
  out.values.assign(static_cast<const char*>(values.data_ptr()),
                    static_cast<size_t>(values.numel()) * sizeof(float));
  return out;
}

absl::Status PatchWriter::Add(const std::string& name, const at::Tensor& mask,
                              const at::Tensor& delta, DType base_dtype,
                              const nlohmann::json& stats) {
  const std::string label =
      absl::StrCat("patch ", path_, ": tensor ", Quote(name));
  TAILOR_ASSIGN_OR_RETURN(PackedPatchEntry packed, Pack(mask, delta, label));
  return AddPacked(name, packed, base_dtype, stats);
}

absl::Status PatchWriter::AddPacked(const std::string& name,
                                    const PackedPatchEntry& packed,
                                    DType base_dtype,
                                    const nlohmann::json& stats) {
  const std::string label =
      absl::StrCat("patch ", path_, ": tensor ", Quote(name));
  if (finished_) {
    return absl::FailedPreconditionError(
        absl::StrCat(label, ": the patch is already finished"));
  }
  if (name.empty() || FindInvalidUtf8(name) != absl::string_view::npos) {
    return absl::InvalidArgumentError(
        absl::StrCat("patch ", path_, ": tensor name must be non-empty UTF-8"));
  }
  if (tensors_.contains(name)) {
    return absl::InvalidArgumentError(
        absl::StrCat(label, ": added twice; each weight appears once"));
  }
  const std::optional<int64_t> n = Numel(packed.shape);
  if (!n || packed.mask.size() != static_cast<uint64_t>((*n + 7) / 8) ||
      packed.values.size() % sizeof(float) != 0 ||
      packed.values.size() / sizeof(float) > static_cast<uint64_t>(*n)) {
    return absl::InvalidArgumentError(
        absl::StrCat(label, ": packed entry sizes do not fit the shape (mask ",
                     packed.mask.size(), " bytes, values ",
                     packed.values.size(), " bytes)"));
  }
  try {
    (void)stats.dump();
  } catch (const std::exception& e) {
    return absl::InvalidArgumentError(
        absl::StrCat(label, ": stats are not serialisable JSON: ", e.what()));
  }

  auto entry = std::make_unique<Entry>();
  entry->name = name;
  entry->shape = packed.shape;
  entry->mask_offset = spool_size_;
  entry->mask_bytes = packed.mask.size();
  entry->values_offset = entry->mask_offset + entry->mask_bytes;
  entry->values_bytes = packed.values.size();
  TAILOR_RETURN_IF_ERROR(PWriteFully(spool_.get(), packed.mask.data(),
                                     packed.mask.size(), entry->mask_offset,
                                     spool_path_));
  TAILOR_RETURN_IF_ERROR(PWriteFully(spool_.get(), packed.values.data(),
                                     packed.values.size(), entry->values_offset,
                                     spool_path_));
  spool_size_ = entry->values_offset + entry->values_bytes;

  tensors_[name] = {
      {"shape", entry->shape},
      {"dtype", std::string(DTypeName(base_dtype))},
      {"kept", static_cast<int64_t>(packed.values.size() / sizeof(float))},
      {"stats", stats}};
  entries_.push_back(std::move(entry));
  return absl::OkStatus();
}

absl::Status PatchWriter::Finish(const PatchMetadata& metadata) {
  TAILOR_RETURN_IF_ERROR(Stage(metadata));
  StagedOutput* const outputs[] = {staged_.get()};
  return PublishAll(outputs);
}

absl::Status PatchWriter::Stage(const PatchMetadata& metadata) {
  if (finished_) {
    return absl::FailedPreconditionError(
        absl::StrCat("patch ", path_, ": already finished"));
  }
  if (!metadata.knobs.is_object()) {
    return absl::InvalidArgumentError(
        absl::StrCat("patch ", path_, ": knobs must be a JSON object"));
  }
  if (!metadata.sources.is_array()) {
    return absl::InvalidArgumentError(
        absl::StrCat("patch ", path_, ": sources must be a JSON array"));
  }
  std::map<std::string, std::string> md;
  try {
    md = {{"format", kPatchFormat},
          {"method", metadata.method},
          {"knobs", metadata.knobs.dump()},
          {"sources", metadata.sources.dump()},
          {"tensors", tensors_.dump()}};
  } catch (const std::exception& e) {
    return absl::InvalidArgumentError(absl::StrCat(
        "patch ", path_, ": metadata is not serialisable JSON: ", e.what()));
  }
  if (FindInvalidUtf8(metadata.method) != absl::string_view::npos) {
    return absl::InvalidArgumentError(
        absl::StrCat("patch ", path_, ": method must be UTF-8"));
  }

  // Data order: element size descending, then name -- every values (F32)
  // tensor before every mask (U8), so each tensor is aligned.
  struct Piece {
    TensorEntry entry;
    uint64_t spool_offset;
  };
  std::vector<Piece> pieces;
  for (const auto& e : entries_) {
    Piece values;
    values.entry.name = e->name + kValuesSuffix;
    values.entry.dtype = DType::kF32;
    values.entry.shape = {
        static_cast<int64_t>(e->values_bytes / sizeof(float))};
    values.entry.end = e->values_bytes;
    values.spool_offset = e->values_offset;
    pieces.push_back(std::move(values));
    Piece mask;
    mask.entry.name = e->name + kMaskSuffix;
    mask.entry.dtype = DType::kU8;
    mask.entry.shape = {static_cast<int64_t>(e->mask_bytes)};
    mask.entry.end = e->mask_bytes;
    mask.spool_offset = e->mask_offset;
    pieces.push_back(std::move(mask));
  }
  std::sort(pieces.begin(), pieces.end(), [](const Piece& a, const Piece& b) {
    const size_t sa = DTypeSize(a.entry.dtype);
    const size_t sb = DTypeSize(b.entry.dtype);
    if (sa != sb) return sa > sb;
    return a.entry.name < b.entry.name;
  });
  std::vector<TensorEntry> ordered;
  uint64_t data_size = 0;
  for (Piece& p : pieces) {
    const uint64_t n = p.entry.end;
    p.entry.begin = data_size;
    p.entry.end = data_size + n;
    data_size += n;
    ordered.push_back(p.entry);
  }
  const std::string head = SerializeSafetensorsHead(md, ordered);
  if (head.size() - 8 > kMaxSafetensorsHeaderSize) {
    return absl::InvalidArgumentError(absl::StrCat(
        "patch ", path_, ": header of ", head.size() - 8,
        " bytes exceeds the safetensors limit of ", kMaxSafetensorsHeaderSize));
  }

  const std::string tmp_path = staged_->staging_path();
  const int out = staged_->fd();
  Sha256 sha;
  TAILOR_RETURN_IF_ERROR(
      PWriteFully(out, head.data(), head.size(), 0, tmp_path));
  sha.Update(head);
  const uint64_t data_offset = head.size();
  std::string buffer;
  for (const Piece& p : pieces) {
    uint64_t done = 0;
    const uint64_t n = p.entry.nbytes();
    while (done < n) {
      const size_t chunk =
          static_cast<size_t>(std::min<uint64_t>(kCopyChunkBytes, n - done));
      buffer.resize(chunk);
      TAILOR_RETURN_IF_ERROR(PReadFully(spool_.get(), buffer.data(), chunk,
                                        p.spool_offset + done, spool_path_));
      TAILOR_RETURN_IF_ERROR(PWriteFully(out, buffer.data(), chunk,
                                         data_offset + p.entry.begin + done,
                                         tmp_path));
      sha.Update(buffer);
      done += chunk;
    }
  }
  if (::ftruncate(out, static_cast<off_t>(data_offset + data_size)) != 0) {
    return ErrnoToStatus(errno, absl::StrCat("resize ", tmp_path));
  }
  if (::fsync(out) != 0) {
    return ErrnoToStatus(errno, absl::StrCat("fsync ", tmp_path));
  }
  finished_ = true;
  size_ = data_offset + data_size;
  sha256_ = sha.FinalHex();
  RemoveSpool();
  return absl::OkStatus();
}

// --- PatchFile ---------------------------------------------------------------

absl::StatusOr<std::unique_ptr<PatchFile>> PatchFile::Open(
    const std::string& path, const Checkpoint::Options& options) {
  auto error = [&](absl::string_view message) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": ", message));
  };
  std::unique_ptr<PatchFile> patch(new PatchFile());
  TAILOR_ASSIGN_OR_RETURN(
      patch->file_,
      OpenFormattedFile(path, options, "tailor patch", kPatchFormat));
  const SafetensorsHeader& header = patch->file_->files()[0]->header();
  const std::map<std::string, std::string>& md = header.metadata;

  auto field = [&](const std::string& key) -> absl::StatusOr<std::string> {
    auto it = md.find(key);
    if (it == md.end()) {
      return error(absl::StrCat("__metadata__ lacks ", Quote(key)));
    }
    return it->second;
  };
  auto json_field =
      [&](const std::string& key, nlohmann::json::value_t type,
          absl::string_view what) -> absl::StatusOr<nlohmann::json> {
    TAILOR_ASSIGN_OR_RETURN(std::string text, field(key));
    TAILOR_ASSIGN_OR_RETURN(
        nlohmann::json value,
        ParseJsonStrict(text,
                        absl::StrCat(path, ": __metadata__ ", Quote(key))));
    if (value.type() != type) {
      return error(
          absl::StrCat("__metadata__ ", Quote(key), " must be ", what));
    }
    return value;
  };
  TAILOR_ASSIGN_OR_RETURN(patch->method_, field("method"));
  TAILOR_ASSIGN_OR_RETURN(
      patch->knobs_,
      json_field("knobs", nlohmann::json::value_t::object, "a JSON object"));
  TAILOR_ASSIGN_OR_RETURN(
      patch->sources_,
      json_field("sources", nlohmann::json::value_t::array, "a JSON array"));
  TAILOR_ASSIGN_OR_RETURN(
      patch->tensor_metadata_,
      json_field("tensors", nlohmann::json::value_t::object, "a JSON object"));

  // Pair the stored tensors by weight.
  struct Pair {
    const ::tailor::TensorEntry* mask = nullptr;
    const ::tailor::TensorEntry* values = nullptr;
  };
  std::map<std::string, Pair> weights;
  for (const ::tailor::TensorEntry& e : header.tensors) {
    if (absl::EndsWith(e.name, kMaskSuffix)) {
      weights[e.name.substr(0, e.name.size() - strlen(kMaskSuffix))].mask = &e;
    } else if (absl::EndsWith(e.name, kValuesSuffix)) {
      weights[e.name.substr(0, e.name.size() - strlen(kValuesSuffix))].values =
          &e;
    } else {
      return error(absl::StrCat("unexpected tensor ", Quote(e.name),
                                ": a patch holds only '<weight>.mask' and "
                                "'<weight>.values' tensors"));
    }
  }
  for (auto it = patch->tensor_metadata_.begin();
       it != patch->tensor_metadata_.end(); ++it) {
    if (weights.count(it.key()) == 0) {
      return error(absl::StrCat("__metadata__ tensors lists ", Quote(it.key()),
                                " but the file holds neither its .mask nor "
                                "its .values"));
    }
  }
  for (const auto& [name, pair] : weights) {
    if (pair.mask == nullptr || pair.values == nullptr) {
      return error(absl::StrCat(
          "tensor ",
          Quote(absl::StrCat(name, pair.mask == nullptr ? ".values" : ".mask")),
          " has no matching ",
          Quote(
              absl::StrCat(name, pair.mask == nullptr ? ".mask" : ".values"))));
    }
    auto md_it = patch->tensor_metadata_.find(name);
    if (md_it == patch->tensor_metadata_.end() || !md_it->is_object()) {
      return error(
          absl::StrCat("__metadata__ tensors has no object for ", Quote(name)));
    }
    const nlohmann::json& m = *md_it;
    const std::string what =
        absl::StrCat("__metadata__ tensors[", Quote(name), "]");
    TensorEntry entry;
    entry.name = name;
    auto shape = m.find("shape");
    if (shape == m.end() || !shape->is_array() ||
        shape->size() > kMaxTensorRank) {
      return error(absl::StrCat(what, ".shape must be an array of at most ",
                                kMaxTensorRank, " non-negative integers"));
    }
    for (const nlohmann::json& d : *shape) {
      // An unsigned value above INT64_MAX reads back negative: rejected too.
      if (!d.is_number_integer() || d.get<int64_t>() < 0) {
        return error(
            absl::StrCat(what, ".shape must hold non-negative integers"));
      }
      entry.shape.push_back(d.get<int64_t>());
    }
    auto dtype = m.find("dtype");
    std::optional<DType> parsed;
    if (dtype != m.end() && dtype->is_string()) {
      parsed = ParseDType(dtype->get_ref<const std::string&>());
    }
    if (!parsed.has_value()) {
      return error(
          absl::StrCat(what, ".dtype must be a safetensors dtype name"));
    }
    entry.base_dtype = *parsed;
    auto kept = m.find("kept");
    if (kept == m.end() || !kept->is_number_integer() ||
        kept->get<int64_t>() < 0) {
      return error(absl::StrCat(what, ".kept must be a non-negative integer"));
    }
    entry.kept = kept->get<int64_t>();
    std::optional<int64_t> numel = Numel(entry.shape);
    if (!numel.has_value()) {
      return error(absl::StrCat(what, ".shape overflows"));
    }
    const ::tailor::TensorEntry& mask = *pair.mask;
    const ::tailor::TensorEntry& values = *pair.values;
    if (mask.dtype != DType::kU8 || mask.shape.size() != 1) {
      return error(absl::StrCat("tensor ", Quote(mask.name),
                                " must be U8 1-D, is ", DTypeName(mask.dtype),
                                " of rank ", mask.shape.size()));
    }
    if (values.dtype != DType::kF32 || values.shape.size() != 1) {
      return error(absl::StrCat(
          "tensor ", Quote(values.name), " must be F32 1-D, is ",
          DTypeName(values.dtype), " of rank ", values.shape.size()));
    }
    const int64_t mask_bytes = *numel / 8 + (*numel % 8 != 0 ? 1 : 0);
    if (mask.shape[0] != mask_bytes) {
      return error(absl::StrCat(
          "tensor ", Quote(mask.name), " has ", mask.shape[0], " bytes; shape ",
          c10::str(at::IntArrayRef(entry.shape)), " (", *numel,
          " entries) needs ceil(", *numel, " / 8) = ", mask_bytes));
    }
    if (values.shape[0] != entry.kept) {
      return error(absl::StrCat("tensor ", Quote(values.name), " has ",
                                values.shape[0], " values but ", what,
                                ".kept is ", entry.kept));
    }
    if (entry.kept > *numel) {
      return error(absl::StrCat(what, ".kept = ", entry.kept, " exceeds the ",
                                *numel, " entries"));
    }
    patch->tensors_.push_back(std::move(entry));
  }
  return patch;
}

const PatchFile::TensorEntry* PatchFile::Find(absl::string_view name) const {
  auto it = std::lower_bound(
      tensors_.begin(), tensors_.end(), name,
      [](const TensorEntry& e, absl::string_view n) { return e.name < n; });
  if (it == tensors_.end() || it->name != name) return nullptr;
  return &*it;
}

absl::StatusOr<std::pair<at::Tensor, at::Tensor>> PatchFile::LoadPacked(
    absl::string_view name) const {
  const TensorEntry* entry = Find(name);
  if (entry == nullptr) {
    return absl::NotFoundError(
        absl::StrCat(path(), ": the patch has no tensor ", Quote(name)));
  }
  const std::string label = absl::StrCat(path(), ": tensor ", Quote(name));
  ReadOptions keep;
  keep.floating_dtype = std::nullopt;
  TAILOR_ASSIGN_OR_RETURN(at::Tensor packed,
                          file_->Read(absl::StrCat(name, kMaskSuffix), keep));
  TAILOR_ASSIGN_OR_RETURN(at::Tensor values,
                          file_->Read(absl::StrCat(name, kValuesSuffix), keep));
  const int64_t n = *Numel(entry->shape);  // checked by Open()
  int64_t popcount = 0;
  TAILOR_ASSIGN_OR_RETURN(at::Tensor mask,
                          UnpackBits(packed, n, &popcount, label));
  if (popcount != entry->kept) {
    return absl::InvalidArgumentError(absl::StrCat(
        label, ": the mask has ", popcount, " set bits but ", entry->kept,
        " values are stored (popcount must equal kept)"));
  }
  // Refused like NaN fine-tuned weights: a NaN would reach the output.
  TAILOR_ASSIGN_OR_RETURN(
      const bool finite, CatchTorch(label, [&] {
        return static_cast<bool>(at::isfinite(values).all().item<bool>());
      }));
  if (!finite) {
    return absl::InvalidArgumentError(
        absl::StrCat(label, ": the patch values contain NaN or Inf"));
  }
  return CatchTorch(label, [&] {
    return std::make_pair(mask.reshape(entry->shape), values);
  });
}

absl::Status PatchFile::ReadMaskBytes(absl::string_view name, uint64_t offset,
                                      uint64_t length, void* buffer) const {
  if (Find(name) == nullptr) {
    return absl::NotFoundError(
        absl::StrCat(path(), ": the patch has no tensor ", Quote(name)));
  }
  return file_->ReadRawRange(absl::StrCat(name, kMaskSuffix), offset, length,
                             buffer);
}

absl::Status PatchFile::ReadValues(absl::string_view name, int64_t first,
                                   int64_t count, float* buffer) const {
  if (Find(name) == nullptr) {
    return absl::NotFoundError(
        absl::StrCat(path(), ": the patch has no tensor ", Quote(name)));
  }
  if (first < 0 || count < 0) {
    return absl::OutOfRangeError(absl::StrCat(path(), ": tensor ", Quote(name),
                                              ": negative values range"));
  }
  return file_->ReadRawRange(absl::StrCat(name, kValuesSuffix),
                             static_cast<uint64_t>(first) * sizeof(float),
                             static_cast<uint64_t>(count) * sizeof(float),
                             buffer);
}

absl::StatusOr<TaskDelta> PatchFile::Load(absl::string_view name) const {
  TAILOR_ASSIGN_OR_RETURN(auto packed, LoadPacked(name));
  return CatchTorch(absl::StrCat(path(), ": tensor ", Quote(name)), [&] {
    TaskDelta out;
    out.mask = packed.first;
    out.delta = at::zeros(packed.first.sizes(), at::kFloat);
    out.delta.masked_scatter_(out.mask, packed.second);
    return out;
  });
}

// --- Fingerprint -------------------------------------------------------------

absl::StatusOr<std::string> HeaderFingerprint(const std::string& path) {
  TAILOR_ASSIGN_OR_RETURN(std::unique_ptr<SafetensorsFile> file,
                          SafetensorsFile::Open(path));
  return HeaderFingerprint(*file);
}

absl::StatusOr<std::string> HeaderFingerprint(const std::string& path,
                                              const UriResolver& resolver) {
  TAILOR_ASSIGN_OR_RETURN(ScopedFd fd, resolver.OpenForRead(path));
  TAILOR_ASSIGN_OR_RETURN(std::unique_ptr<SafetensorsFile> file,
                          SafetensorsFile::Open(path, std::move(fd)));
  return HeaderFingerprint(*file);
}

absl::StatusOr<std::string> HeaderFingerprint(const SafetensorsFile& file) {
  const std::string& path = file.path();
  const uint64_t size = file.header().data_offset();
  const int fd = file.fd();
  std::string bytes(static_cast<size_t>(size), '\0');
  TAILOR_RETURN_IF_ERROR(PReadFully(fd, bytes.data(), bytes.size(), 0, path));
  // The file may have changed since it was validated; the length prefix
  // must still match what was validated.
  uint64_t prefix = 0;
  for (int i = 0; i < 8; ++i) {
    prefix |= static_cast<uint64_t>(static_cast<uint8_t>(bytes[i])) << (8 * i);
  }
  if (prefix != file.header().header_size) {
    return absl::AbortedError(
        absl::StrCat(path, ": the file changed while it was fingerprinted"));
  }
  return Sha256Hex(bytes);
}

absl::StatusOr<std::string> DataFingerprint(const std::string& path) {
  TAILOR_ASSIGN_OR_RETURN(std::unique_ptr<SafetensorsFile> file,
                          SafetensorsFile::Open(path));
  return DataFingerprint(*file);
}

absl::StatusOr<std::string> DataFingerprint(const SafetensorsFile& file) {
  const std::string& path = file.path();
  const uint64_t begin = file.header().data_offset();
  const uint64_t size = file.header().data_size;
  const int fd = file.fd();
  Sha256 sha;
  std::string block;
  auto add = [&](uint64_t offset, uint64_t n) -> absl::Status {
    block.resize(static_cast<size_t>(n));
    TAILOR_RETURN_IF_ERROR(
        PReadFully(fd, block.data(), block.size(), begin + offset, path));
    sha.Update(absl::StrCat(offset, ":", n, ":"));
    sha.Update(block);
    return absl::OkStatus();
  };
  constexpr uint64_t kTotal = kDataSampleBlocks * kDataSampleBlockBytes;
  if (size <= kTotal) {
    if (size > 0) TAILOR_RETURN_IF_ERROR(add(0, size));
  } else {
    const unsigned __int128 last = size - kDataSampleBlockBytes;
    for (int i = 0; i < kDataSampleBlocks; ++i) {
      TAILOR_RETURN_IF_ERROR(
          add(static_cast<uint64_t>(last * i / (kDataSampleBlocks - 1)),
              kDataSampleBlockBytes));
    }
  }
  return sha.FinalHex();
}

}  // namespace tailor
