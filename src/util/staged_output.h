#ifndef TAILOR_UTIL_STAGED_OUTPUT_H_
#define TAILOR_UTIL_STAGED_OUTPUT_H_

#include <atomic>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/types/span.h"
#include "storage/object_store.h"
#include "storage/uri_resolver.h"
#include "util/file_util.h"

namespace tailor {

// Staging entries: an output named N is built as ".N.tailor-stage-<pid>-<k>"
// (a directory or a file) beside it, a patch's spool is
// ".N.tailor-spool-<pid>-<k>". Every live writer holds an exclusive flock(2)
// on its staging entry for its whole life, so a later process tells a stale
// entry (its writer died, even by SIGKILL) from a live one by trying the
// lock -- the PID in the name is informational only (in a container tailord
// is always PID 1).
std::string StagingName(absl::string_view final_name, absl::string_view kind);

// True if directory entry `entry` is a staging name tailor uses for an output
// named `final_name`: the current forms above, or the legacy ones of earlier
// versions (".N.partial-P-K", ".N.spool-P-K", ".N.tmp-P-K", P and K decimal).
bool IsStagingNameFor(absl::string_view entry, absl::string_view final_name);

// In directory `dir` (absolute and canonical, as a resolver returns it),
// removes the staging entries (IsStagingNameFor) of outputs named
// `final_names` that no live writer holds locked. `dir` is opened with
// OpenDirectoryNoFollow(): if any component of it is now a symlink (swapped
// in after it was resolved) nothing is removed. Never follows symlinks and
// never touches anything else. Best effort: returns the number removed; a
// missing, unreadable or non-canonical `dir` removes nothing.
int RemoveStaleStaging(const std::string& dir,
                       const std::vector<std::string>& final_names);

// Opens the directory at absolute canonical `path` (no symlink anywhere in
// it) without following any symlink: component by component from "/" with
// openat(O_NOFOLLOW | O_DIRECTORY). A component that is now a symlink or not
// a directory is FAILED_PRECONDITION; a missing one NOT_FOUND.
absl::StatusOr<ScopedFd> OpenDirectoryNoFollow(const std::string& path);

// Removes entry `name` of directory `dirfd` (a file, a symlink itself, or a
// whole tree), never following symlinks. A missing entry is OK.
absl::Status RemoveTreeAt(int dirfd, const std::string& name,
                          absl::string_view label);

// One output (a file or a directory) built under a staging name next to its
// final path and published by a rename relative to its parent directory's
// descriptor, opened at Create() without following symlinks. Publishing
// re-walks the parent's path the same way and refuses if it is no longer the
// directory opened at Create() (replaced, or a component swapped for a
// symlink), so outputs never land anywhere but where they were resolved.
//
// With `overwrite`, an existing output is atomically exchanged
// (renameat2 RENAME_EXCHANGE) and kept under the staging name until
// Finalize() removes it, so Rollback() can restore it. Without, the rename
// never replaces anything (RENAME_NOREPLACE). An existing entry of the other
// kind (a file where a directory goes, or a symlink) is never replaced.
//
// Destroyed without Publish(): the staging entry is removed. Not
// thread-safe.
//
// A remote output (issue #16 point 3: `path` an s3:// URI) is staged the
// same way in a local scratch directory (RemoteTarget), then at PublishAll
// every file of it is uploaded (ObjectStore::BeginUpload/Append) before any
// is committed; Publish() commits them (a fused checkpoint's index last),
// Rollback() deletes what was committed, and destruction aborts every
// pending upload, so a failed job leaves no visible object. The overwrite
// rule is a local output's: an existing object (or, for a directory, any
// object under the prefix) is ALREADY_EXISTS without `overwrite`; with it,
// objects of the old prefix that the new output does not have are deleted
// once all are committed (an overwritten object cannot be restored by
// Rollback).
class StagedOutput {
 public:
  enum class Kind { kFile, kDirectory };

  // Where a remote output goes and where it is staged first.
  struct RemoteTarget {
    std::shared_ptr<ObjectStore> store;
    ObjectUri uri;
    // An existing local directory (tailord: under its data directory;
    // tailorctl: --scratch-dir).
    std::string scratch_dir;
  };

  // `path` names the final output; its parent directory must exist (NOT_FOUND
  // otherwise) and is canonicalised here (this is the moment the location is
  // trusted; path() is the result). An existing `path` without `overwrite`
  // is ALREADY_EXISTS; one of the other kind FAILED_PRECONDITION.
  static absl::StatusOr<std::unique_ptr<StagedOutput>> Create(
      const std::string& path, Kind kind, bool overwrite);
  // A remote output (path() is remote.uri's text form).
  static absl::StatusOr<std::unique_ptr<StagedOutput>> CreateRemote(
      RemoteTarget remote, Kind kind, bool overwrite);
  ~StagedOutput();

  StagedOutput(const StagedOutput&) = delete;
  StagedOutput& operator=(const StagedOutput&) = delete;

  const std::string& path() const { return path_; }
  std::string staging_path() const;
  // The staging file (open O_RDWR) or directory (O_RDONLY | O_DIRECTORY).
  int fd() const { return fd_.get(); }
  int parent_fd() const { return parent_fd_.get(); }

  // Everything Publish() checks before renaming: the parent is still the
  // directory opened at Create(), the final entry is absent (or, with
  // overwrite, of the same kind and not a symlink).
  absl::Status CheckPublishable() const;
  // A remote output: uploads every staged file without committing any
  // (PublishAll calls it for every remote output before the first Publish).
  // OK and nothing for a local one. CANCELLED (naming the object) once
  // `cancel` (may be null) is set, checked before every part-sized chunk.
  // Each multipart upload's id is recorded in the scratch directory before
  // its first part (util/upload_record.h), so a crash leaves it abortable.
  absl::Status Upload(const std::atomic<bool>* cancel = nullptr);
  bool remote() const { return remote_ != nullptr; }
  // Renames the staging entry into place and fsyncs the parent (remote:
  // commits the uploads).
  absl::Status Publish();
  // Undoes Publish(): the replaced output goes back (or the new one goes
  // back under its staging name, to be removed).
  absl::Status Rollback();
  // After Publish(): removes the replaced output, if any.
  void Finalize();

 private:
  StagedOutput() = default;
  struct Remote;  // staged_output_remote.cc
  absl::Status CheckRemotePublishable() const;
  absl::Status PublishRemote();
  absl::Status RollbackRemote();
  void FinalizeRemote();

  std::string path_;         // canonical final path
  std::string parent_path_;  // canonical parent directory
  std::string name_;         // final entry name in the parent
  std::string staging_name_;
  Kind kind_ = Kind::kFile;
  bool overwrite_ = false;
  ScopedFd parent_fd_;
  ScopedFd fd_;         // the staging entry; holds its flock
  ScopedFd backup_fd_;  // the replaced output after an exchange; locked
  bool published_ = false;
  bool replaced_ = false;  // Publish() exchanged with an existing output
  bool finalized_ = false;
  struct RemoteDeleter {
    void operator()(Remote* r) const;  // aborts its pending uploads
  };
  std::unique_ptr<Remote, RemoteDeleter> remote_;  // set for a remote output
};

// Publishes `outputs` as one unit: checks every one (CheckPublishable), then
// renames them into place in order; if a rename fails, the ones already
// published are rolled back (in reverse order, restoring what they
// replaced). Finally the replaced outputs are removed. Setting `cancel`
// (may be null) while remote outputs upload stops the publish (CANCELLED,
// nothing visible); once the commits begin it is not looked at.
//
// Remaining window: between the first and the last rename (a few syscalls)
// a reader can see some outputs new and others old, and a crash inside it
// leaves them so (the replaced ones stay under their staging names, removed
// as stale by the next cleanup). Renames cannot be made atomic as a group.
absl::Status PublishAll(absl::Span<StagedOutput* const> outputs,
                        const std::atomic<bool>* cancel = nullptr);

// StagedOutput::Create() for a local `path`; CreateRemote() for a remote one
// (IsRemoteUri: a path the resolver's ResolveForWrite returned), with the
// store and the scratch directory of `resolver` (required then;
// INVALID_ARGUMENT without).
absl::StatusOr<std::unique_ptr<StagedOutput>> CreateStagedOutput(
    const std::string& path, StagedOutput::Kind kind, bool overwrite,
    const UriResolver* resolver);

}  // namespace tailor

#endif  // TAILOR_UTIL_STAGED_OUTPUT_H_
