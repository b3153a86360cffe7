#ifndef TAILOR_STORAGE_S3_UPLOAD_H_
#define TAILOR_STORAGE_S3_UPLOAD_H_

// An s3:// object being written (storage/s3_store.h describes the protocol;
// storage/object_store.h the ObjectUpload contract). Internal to
// tailor_remote. Not thread-safe: one writer.

#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "storage/object_store.h"

namespace tailor {

class S3Store;

class S3Upload : public ObjectUpload {
 public:
  S3Upload(std::shared_ptr<S3Store> store, ObjectUri uri, uint64_t part_bytes);
  // Aborts an uncommitted multipart upload (best effort).
  ~S3Upload() override;

  absl::Status Append(absl::string_view bytes) override;
  absl::Status Commit() override;
  absl::Status Abort() override;

 private:
  absl::Status Create();
  absl::Status SendPart(absl::string_view bytes);
  absl::Status PutWhole();
  absl::Status Complete();
  // Once failed, every later call returns the same error.
  absl::Status Fail(absl::Status s);

  std::shared_ptr<S3Store> store_;
  const ObjectUri uri_;
  const std::string subject_;
  const uint64_t part_bytes_;
  std::string buffer_;
  std::string upload_id_;  // empty until CreateMultipartUpload
  std::vector<std::pair<int, std::string>> parts_;  // (number, ETag)
  uint64_t total_bytes_ = 0;
  enum class State { kOpen, kCommitted, kAborted, kFailed };
  State state_ = State::kOpen;
  absl::Status failure_;
};

}  // namespace tailor

#endif  // TAILOR_STORAGE_S3_UPLOAD_H_
