#include "io/fingerprint.h"

#include <memory>

#include "absl/strings/str_cat.h"
#include "io/safetensors_file.h"
#include "storage/uri_resolver.h"
#include "util/file_util.h"
#include "util/sha256.h"
#include "util/status_macros.h"

namespace tailor {

absl::StatusOr<std::string> HeaderFingerprint(const std::string& path) {
  TAILOR_ASSIGN_OR_RETURN(std::unique_ptr<SafetensorsFile> file,
                          SafetensorsFile::Open(path));
  return HeaderFingerprint(*file);
}

absl::StatusOr<std::string> HeaderFingerprint(const std::string& path,
                                              const UriResolver& resolver) {
  TAILOR_ASSIGN_OR_RETURN(std::unique_ptr<ByteSource> source,
                          resolver.OpenSource(path));
  TAILOR_ASSIGN_OR_RETURN(std::unique_ptr<SafetensorsFile> file,
                          SafetensorsFile::Open(std::move(source), path));
  return HeaderFingerprint(*file);
}

absl::StatusOr<std::string> HeaderFingerprint(const SafetensorsFile& file) {
  const std::string& path = file.path();
  const uint64_t size = file.header().data_offset();
  std::string bytes(static_cast<size_t>(size), '\0');
  TAILOR_RETURN_IF_ERROR(file.source().ReadAt(0, bytes.size(), bytes.data()));
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
  const uint64_t begin = file.header().data_offset();
  const uint64_t size = file.header().data_size;
  Sha256 sha;
  std::string block;
  auto add = [&](uint64_t offset, uint64_t n) -> absl::Status {
    block.resize(static_cast<size_t>(n));
    TAILOR_RETURN_IF_ERROR(
        file.source().ReadAt(begin + offset, block.size(), block.data()));
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
