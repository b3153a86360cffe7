#include "io/safetensors_file.h"

#include <string>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "util/quote.h"
#include "util/status_macros.h"

namespace tailor {
namespace {

absl::Status PickleError(absl::string_view label, absl::string_view what) {
  return absl::InvalidArgumentError(absl::StrCat(
      label, ": ", what,
      " is refused: loading pickle checkpoints (.bin/.pt/.pth) can execute "
      "arbitrary code. Convert it to safetensors first, e.g. in Python: "
      "`from transformers import AutoModel; "
      "AutoModel.from_pretrained(DIR).save_pretrained(OUT, "
      "safe_serialization=True)`, or for a plain state dict: "
      "`safetensors.torch.save_file(torch.load(F, weights_only=True), "
      "'model.safetensors')` in an environment you trust"));
}

}  // namespace

absl::Status RefuseIfPickle(absl::string_view prefix, absl::string_view label) {
  if (absl::StartsWith(prefix, absl::string_view("PK\x03\x04", 4))) {
    return PickleError(label, "a PyTorch zip archive (torch.save format)");
  }
  if (prefix.size() >= 2 && static_cast<uint8_t>(prefix[0]) == 0x80 &&
      static_cast<uint8_t>(prefix[1]) >= 2 &&
      static_cast<uint8_t>(prefix[1]) <= 5) {
    return PickleError(label, "a Python pickle stream");
  }
  return absl::OkStatus();
}

absl::Status RefuseIfPickleName(absl::string_view path) {
  for (absl::string_view ext :
       {".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle"}) {
    if (absl::EndsWithIgnoreCase(path, ext)) {
      return PickleError(path, absl::StrCat("a pickle checkpoint (", ext, ")"));
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<SafetensorsFile>> SafetensorsFile::Open(
    const std::string& path) {
  TAILOR_RETURN_IF_ERROR(RefuseIfPickleName(path));
  TAILOR_ASSIGN_OR_RETURN(ScopedFd fd, OpenForRead(path));
  return Open(path, std::move(fd));
}

absl::StatusOr<std::unique_ptr<SafetensorsFile>> SafetensorsFile::Open(
    const std::string& path, ScopedFd fd) {
  TAILOR_RETURN_IF_ERROR(RefuseIfPickleName(path));
  TAILOR_ASSIGN_OR_RETURN(std::unique_ptr<ByteSource> source,
                          NewFileByteSource(path, std::move(fd)));
  return Open(std::move(source), path);
}

absl::StatusOr<std::unique_ptr<SafetensorsFile>> SafetensorsFile::Open(
    std::unique_ptr<ByteSource> source, const std::string& name) {
  const std::string path = name.empty() ? source->name() : name;
  TAILOR_RETURN_IF_ERROR(RefuseIfPickleName(path));
  const uint64_t file_size = source->size();
  char prefix[9] = {};
  if (file_size >= 8) {
    const size_t n = file_size >= 9 ? 9 : 8;
    TAILOR_RETURN_IF_ERROR(source->ReadAt(0, n, prefix));
    // A header length whose first byte is 0x80 and second 2..5 (640, 896,
    // 1152, 1408 bytes, ...) starts like a pickle stream: a file whose
    // length is plausible and whose header then opens with '{' is read as
    // safetensors (its JSON is checked next; nothing is ever unpickled).
    const bool safetensors_like =
        n == 9 && prefix[8] == '{' &&
        ParseSafetensorsHeaderLength(absl::string_view(prefix, 8), file_size,
                                     path)
            .ok();
    if (!safetensors_like) {
      TAILOR_RETURN_IF_ERROR(
          RefuseIfPickle(absl::string_view(prefix, 8), path));
    }
  }
  TAILOR_ASSIGN_OR_RETURN(uint64_t header_size,
                          ParseSafetensorsHeaderLength(
                              absl::string_view(prefix, 8), file_size, path));
  // header_size <= min(100 MB, file_size - 8): the allocation is bounded by
  // the file itself.
  std::string json(header_size, '\0');
  TAILOR_RETURN_IF_ERROR(source->ReadAt(8, json.size(), json.data()));
  TAILOR_ASSIGN_OR_RETURN(
      SafetensorsHeader header,
      ParseSafetensorsHeaderJson(json, file_size - 8 - header_size, path));
  return std::unique_ptr<SafetensorsFile>(new SafetensorsFile(
      path, std::move(source), file_size, std::move(header)));
}

absl::Status SafetensorsFile::ReadRaw(const TensorEntry& entry,
                                      void* buffer) const {
  return source_->ReadAt(header_.data_offset() + entry.begin, entry.nbytes(),
                         buffer);
}

absl::Status SafetensorsFile::ReadRawRange(const TensorEntry& entry,
                                           uint64_t offset, uint64_t length,
                                           void* buffer) const {
  if (offset > entry.nbytes() || length > entry.nbytes() - offset) {
    return absl::InvalidArgumentError(absl::StrCat(
        path_, ": tensor ", Quote(entry.name), ": byte range [", offset, ", ",
        offset + length, ") leaves its ", entry.nbytes(), " bytes"));
  }
  return source_->ReadAt(header_.data_offset() + entry.begin + offset, length,
                         buffer);
}

}  // namespace tailor
