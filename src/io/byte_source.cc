#include "io/byte_source.h"

#include <utility>

#include "absl/strings/str_cat.h"
#include "util/status_macros.h"

namespace tailor {
namespace {

class FileByteSource : public ByteSource {
 public:
  FileByteSource(std::string name, ScopedFd fd, uint64_t size)
      : name_(std::move(name)), fd_(std::move(fd)), size_(size) {}

  uint64_t size() const override { return size_; }
  const std::string& name() const override { return name_; }
  absl::Status ReadAt(uint64_t offset, uint64_t length,
                      void* out) const override {
    if (offset > size_ || length > size_ - offset) {
      return RangeOutside(name_, offset, length, size_);
    }
    return PReadFully(fd_.get(), out, length, offset, name_);
  }

 private:
  const std::string name_;
  const ScopedFd fd_;
  const uint64_t size_;
};

}  // namespace

absl::Status RangeOutside(absl::string_view name, uint64_t offset,
                          uint64_t length, uint64_t size) {
  return absl::InvalidArgumentError(
      absl::StrCat(name, ": byte range [", offset, ", ", offset + length,
                   ") leaves its ", size, " bytes"));
}

absl::StatusOr<std::unique_ptr<ByteSource>> NewFileByteSource(std::string name,
                                                              ScopedFd fd) {
  TAILOR_ASSIGN_OR_RETURN(uint64_t size, RegularFileSize(fd.get(), name));
  return std::unique_ptr<ByteSource>(
      new FileByteSource(std::move(name), std::move(fd), size));
}

absl::StatusOr<std::string> ReadWholeSource(const ByteSource& source,
                                            uint64_t max_bytes) {
  if (source.size() > max_bytes) {
    return absl::InvalidArgumentError(
        absl::StrCat(source.name(), ": file is ", source.size(),
                     " bytes; the limit is ", max_bytes));
  }
  std::string contents(source.size(), '\0');
  TAILOR_RETURN_IF_ERROR(source.ReadAt(0, contents.size(), contents.data()));
  return contents;
}

}  // namespace tailor
