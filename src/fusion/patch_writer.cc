#include <ATen/ATen.h>
#include <fcntl.h>
#include <sys/file.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <map>
#include <optional>
#include <utility>

#include "absl/strings/str_cat.h"
#include "fusion/patch.h"
#include "fusion/patch_format.h"
#include "io/bit_packing.h"
#include "io/safetensors_header.h"
#include "util/errno_status.h"
#include "util/field_error.h"
#include "util/json_util.h"
#include "util/quote.h"
#include "util/sha256.h"
#include "util/status_macros.h"
#include "util/torch_status.h"

// PatchWriter (fusion/patch.h): spools the entries, then writes the header
// and the data in the format's order.

namespace tailor {
namespace {

// Spool -> output copies go through a buffer of this size.
constexpr size_t kCopyChunkBytes = 8u << 20;

}  // namespace

struct PatchWriter::Entry {
  std::string name;  // the weight W
  std::vector<int64_t> shape;
  uint64_t mask_offset = 0;  // in the spool
  uint64_t mask_bytes = 0;
  uint64_t values_offset = 0;
  uint64_t values_bytes = 0;
};

absl::StatusOr<std::unique_ptr<PatchWriter>> PatchWriter::Create(
    const std::string& path, bool overwrite, const UriResolver* resolver) {
  if (path.empty()) {
    return absl::InvalidArgumentError("patch writer: empty output path");
  }
  if (!IsRemoteUri(path) && IsDirectory(path)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "patch output ", path, " is a directory; a patch is a single file"));
  }
  std::unique_ptr<PatchWriter> w(new PatchWriter());
  TAILOR_ASSIGN_OR_RETURN(
      w->staged_,
      CreateStagedOutput(path, StagedOutput::Kind::kFile, overwrite, resolver));
  w->path_ = w->staged_->path();
  // The spool lives beside the staging file (for a remote patch: in the
  // scratch directory).
  w->spool_name_ = StagingName(Basename(w->path_), "spool");
  w->spool_path_ =
      JoinPath(Dirname(w->staged_->staging_path()), w->spool_name_);
  const int fd =
      ::openat(w->staged_->parent_fd(), w->spool_name_.c_str(),
               O_RDWR | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
  if (fd < 0) {
    return ErrnoError(errno, absl::StrCat("create ", w->spool_path_));
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
    return FieldError(label, "mask must be a bool tensor");
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
  const std::optional<int64_t> n = PatchShapeNumel(packed.shape);
  if (!n || packed.mask.size() != static_cast<uint64_t>(PackedMaskBytes(*n)) ||
      packed.values.size() % sizeof(float) != 0 ||
      packed.values.size() / sizeof(float) > static_cast<uint64_t>(*n)) {
    return absl::InvalidArgumentError(
        absl::StrCat(label, ": packed entry sizes do not fit the shape (mask ",
                     packed.mask.size(), " bytes, values ",
                     packed.values.size(), " bytes)"));
  }
  TAILOR_RETURN_IF_ERROR(
      DumpJson(stats, absl::StrCat(label, ": stats are not serialisable JSON"))
          .status());

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
  const std::string not_json =
      absl::StrCat("patch ", path_, ": metadata is not serialisable JSON");
  TAILOR_ASSIGN_OR_RETURN(std::string knobs,
                          DumpJson(metadata.knobs, not_json));
  TAILOR_ASSIGN_OR_RETURN(std::string sources,
                          DumpJson(metadata.sources, not_json));
  TAILOR_ASSIGN_OR_RETURN(std::string tensors, DumpJson(tensors_, not_json));
  const std::map<std::string, std::string> md = {
      {"format", kPatchFormat},
      {"method", metadata.method},
      {"knobs", std::move(knobs)},
      {"sources", std::move(sources)},
      {"tensors", std::move(tensors)}};
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
    values.entry.name = e->name + kPatchValuesSuffix;
    values.entry.dtype = DType::kF32;
    values.entry.shape = {
        static_cast<int64_t>(e->values_bytes / sizeof(float))};
    values.entry.end = e->values_bytes;
    values.spool_offset = e->values_offset;
    pieces.push_back(std::move(values));
    Piece mask;
    mask.entry.name = e->name + kPatchMaskSuffix;
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
    return ErrnoError(errno, absl::StrCat("resize ", tmp_path));
  }
  if (::fsync(out) != 0) {
    return ErrnoError(errno, absl::StrCat("fsync ", tmp_path));
  }
  finished_ = true;
  size_ = data_offset + data_size;
  sha256_ = sha.FinalHex();
  RemoveSpool();
  return absl::OkStatus();
}

}  // namespace tailor
