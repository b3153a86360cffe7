#include "storage/remote_byte_source.h"

#include <algorithm>
#include <cstring>
#include <string>
#include <utility>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "util/status_macros.h"

namespace tailor {
namespace {

constexpr uint64_t kFirstWindow = 64 << 10;

class RemoteByteSource : public ByteSource {
 public:
  RemoteByteSource(std::shared_ptr<ObjectStore> store, ObjectUri uri,
                   ObjectInfo info, uint64_t read_ahead)
      : store_(std::move(store)),
        uri_(std::move(uri)),
        info_(std::move(info)),
        name_(uri_.ToString()),
        read_ahead_(std::min(read_ahead, kRemoteReadAheadBytes * 4)) {}

  uint64_t size() const override { return info_.size; }
  const std::string& name() const override { return name_; }

  absl::Status ReadAt(uint64_t offset, uint64_t length,
                      void* out) const override {
    if (offset > info_.size || length > info_.size - offset) {
      return RangeOutside(name_, offset, length, info_.size);
    }
    if (length == 0) return absl::OkStatus();
    if (length > read_ahead_) {
      return store_->ReadRange(uri_, info_, offset, length,
                               static_cast<char*>(out));
    }
    absl::MutexLock lock(&mu_);
    if (offset < window_offset_ ||
        offset + length > window_offset_ + window_.size()) {
      // Refill: the window starts at this read. It starts small (a header
      // read fetches little more than the header) and doubles while reads
      // are sequential (tensor after tensor), up to read_ahead_.
      const bool sequential = offset == window_offset_ + window_.size();
      next_window_ =
          sequential ? std::min(next_window_ * 2, read_ahead_) : kFirstWindow;
      const uint64_t n = std::min(std::max({length, next_window_, uint64_t{1}}),
                                  info_.size - offset);
      window_.clear();
      std::string fresh(n, '\0');
      TAILOR_RETURN_IF_ERROR(
          store_->ReadRange(uri_, info_, offset, n, fresh.data()));
      window_ = std::move(fresh);
      window_offset_ = offset;
    }
    std::memcpy(out, window_.data() + (offset - window_offset_), length);
    return absl::OkStatus();
  }

 private:
  const std::shared_ptr<ObjectStore> store_;
  const ObjectUri uri_;
  const ObjectInfo info_;
  const std::string name_;
  const uint64_t read_ahead_;
  mutable absl::Mutex mu_;
  // The last ranged GET: bytes [window_offset_, + window_.size()).
  mutable std::string window_ ABSL_GUARDED_BY(mu_);
  mutable uint64_t window_offset_ ABSL_GUARDED_BY(mu_) = 0;
  mutable uint64_t next_window_ ABSL_GUARDED_BY(mu_) = kFirstWindow;
};

}  // namespace

std::unique_ptr<ByteSource> NewRemoteByteSource(
    std::shared_ptr<ObjectStore> store, ObjectUri uri, ObjectInfo info,
    uint64_t read_ahead) {
  return std::make_unique<RemoteByteSource>(std::move(store), std::move(uri),
                                            std::move(info), read_ahead);
}

}  // namespace tailor
