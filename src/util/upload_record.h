#ifndef TAILOR_UTIL_UPLOAD_RECORD_H_
#define TAILOR_UTIL_UPLOAD_RECORD_H_

// The multipart uploads a remote output has begun, kept durably in its
// scratch directory (issue #16 point 3), so that a process killed while
// uploading (even by SIGKILL) leaves enough behind for the next one to abort
// them: a started upload holds no visible object, but the store keeps (and
// bills) its parts until it is aborted. Torch-free (tailor_base).
//
// A record is the file "<dir>/.<name>.tailor-uploads" of lines
// "<uri>\t<upload id>\n", written and fdatasync'ed before the first part of
// each upload is sent, and held under an exclusive flock(2) by its writer
// for its whole life (as staging entries are: util/staged_output.h), so a
// cleanup tells a dead writer's record from a live one by trying the lock.

#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "storage/object_store.h"
#include "util/file_util.h"

namespace tailor {

class UploadRecord {
 public:
  // Creates (exclusively) and locks the record of the output staged as
  // `name` in directory `dir`.
  static absl::StatusOr<std::unique_ptr<UploadRecord>> Create(
      const std::string& dir, absl::string_view name);
  // Unlocks the record; removes it unless Keep() was called.
  ~UploadRecord();

  UploadRecord(const UploadRecord&) = delete;
  UploadRecord& operator=(const UploadRecord&) = delete;

  // Appends one started upload and makes it durable.
  absl::Status Add(const ObjectUri& uri, absl::string_view upload_id);
  // Leaves the file for the next cleanup (an abort that could not reach the
  // store).
  void Keep() { keep_ = true; }
  const std::string& path() const { return path_; }

 private:
  UploadRecord(std::string path, ScopedFd fd)
      : path_(std::move(path)), fd_(std::move(fd)) {}
  std::string path_;
  ScopedFd fd_;  // holds the flock
  uint64_t size_ = 0;
  bool keep_ = false;
};

// What CleanRemoteScratch did.
struct RemoteScratchCleanup {
  int records = 0;         // dead writers' records handled
  int aborted = 0;         // uploads aborted (or already gone)
  int abort_failures = 0;  // uploads that could not be aborted
  int staging_removed = 0;
};

// Cleans scratch directory `dir` (absolute, canonical) after a crash: for
// every record no live writer holds, aborts each upload it lists through
// `provider` (ObjectStore::AbortUpload) and removes the record -- kept only
// when an abort was UNAVAILABLE (the store unreachable: retried next time);
// then removes the unlocked staging entries of remote outputs
// (".remote-*.tailor-stage-*", RemoveStaleStaging). Never follows symlinks;
// a missing `dir` is nothing to do. Failures are logged (names and upload
// ids only), never fatal.
RemoteScratchCleanup CleanRemoteScratch(const std::string& dir,
                                        ObjectStoreProvider* provider);

}  // namespace tailor

#endif  // TAILOR_UTIL_UPLOAD_RECORD_H_
