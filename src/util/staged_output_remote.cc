// StagedOutput's remote half (util/staged_output.h, issue #16 point 3): a
// remote output is staged in a local scratch directory, uploaded file by
// file without committing, then committed as a unit.

#include <dirent.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "util/errno_status.h"
#include "util/log.h"
#include "util/staged_output.h"
#include "util/status_macros.h"
#include "util/upload_record.h"

namespace tailor {

struct StagedOutput::Remote {
  std::shared_ptr<ObjectStore> store;
  ObjectUri uri;
  struct Pending {
    ObjectUri uri;
    std::unique_ptr<ObjectUpload> upload;
  };
  bool uploaded = false;
  std::vector<Pending> pending;      // uploaded, not yet committed, in order
  std::vector<ObjectUri> committed;  // visible now
  // The started multipart uploads, for a cleanup after a crash
  // (util/upload_record.h); created at the first one.
  std::string scratch_dir;
  std::string local_name;  // the local output's name in scratch_dir
  std::unique_ptr<UploadRecord> record;

  absl::Status Record(const ObjectUri& target, const std::string& id) {
    if (record == nullptr) {
      TAILOR_ASSIGN_OR_RETURN(record,
                              UploadRecord::Create(scratch_dir, local_name));
    }
    return record->Add(target, id);
  }

  ~Remote() {
    for (Pending& p : pending) {
      if (p.upload == nullptr) continue;
      const absl::Status s = p.upload->Abort();
      if (!s.ok()) {
        Log(LogLevel::kWarning, "",
            absl::StrCat("abandoning the upload of ", p.uri.ToString(), ": ",
                         s.message()));
      }
      // The store unreachable: the next start's cleanup aborts it.
      if (absl::IsUnavailable(s) && record != nullptr) record->Keep();
    }
  }
};

void StagedOutput::RemoteDeleter::operator()(Remote* r) const { delete r; }

namespace {

constexpr size_t kUploadChunk = 8 << 20;

// An output's prefix form ("key/") for listing what lies under it.
ObjectUri AsPrefix(ObjectUri uri) {
  if (!uri.key.empty() && !absl::EndsWith(uri.key, "/")) uri.key.push_back('/');
  return uri;
}

// The overwrite rule of a local output, for a remote one. `appeared`: the
// check before publishing (different wording).
absl::Status CheckExisting(ObjectStore& store, const ObjectUri& uri,
                           StagedOutput::Kind kind, bool overwrite,
                           bool appeared) {
  const std::string name = uri.ToString();
  bool object = false;
  absl::StatusOr<ObjectInfo> info = store.Stat(uri);
  if (info.ok()) {
    object = true;
  } else if (!absl::IsNotFound(info.status())) {
    return info.status();
  }
  bool prefix = false;
  absl::StatusOr<std::vector<ObjectUri>> children = store.List(AsPrefix(uri));
  if (children.ok()) {
    prefix = !children->empty();
  } else if (!absl::IsUnimplemented(children.status())) {
    return children.status();
  }
  if (!object && !prefix) return absl::OkStatus();
  if (!overwrite) {
    return absl::AlreadyExistsError(
        appeared
            ? absl::StrCat(name, " appeared while writing; not replacing it")
            : absl::StrCat(name,
                           " already exists; choose another path, or set "
                           "overwrite: true (tailorctl --overwrite) to "
                           "replace it"));
  }
  if (kind == StagedOutput::Kind::kDirectory && object) {
    return absl::FailedPreconditionError(
        absl::StrCat(name,
                     " exists and is an object, not a prefix (directory); not "
                     "replacing it"));
  }
  if (kind == StagedOutput::Kind::kFile && prefix) {
    return absl::FailedPreconditionError(absl::StrCat(
        name,
        " is a prefix holding objects (a directory?); this output is a "
        "single object; not replacing it"));
  }
  return absl::OkStatus();
}

// The regular files under `dir` (relative '/'-joined names, sorted), never
// following a symlink (one is FAILED_PRECONDITION).
absl::Status ListTree(const std::string& dir, const std::string& rel,
                      std::vector<std::string>* out) {
  DIR* d = ::opendir(dir.c_str());
  if (d == nullptr) return ErrnoError(errno, absl::StrCat("open ", dir));
  std::vector<std::string> names;
  while (struct dirent* e = ::readdir(d)) {
    const std::string n = e->d_name;
    if (n != "." && n != "..") names.push_back(n);
  }
  ::closedir(d);
  std::sort(names.begin(), names.end());
  for (const std::string& n : names) {
    const std::string path = JoinPath(dir, n);
    const std::string child = rel.empty() ? n : absl::StrCat(rel, "/", n);
    struct stat st;
    if (::lstat(path.c_str(), &st) != 0) {
      return ErrnoError(errno, absl::StrCat("inspect ", path));
    }
    if (S_ISDIR(st.st_mode)) {
      TAILOR_RETURN_IF_ERROR(ListTree(path, child, out));
    } else if (S_ISREG(st.st_mode)) {
      out->push_back(child);
    } else {
      return absl::FailedPreconditionError(absl::StrCat(
          path, " is not a regular file or directory; not uploading it"));
    }
  }
  return absl::OkStatus();
}

// Streams local file `path` into `upload`; CANCELLED as soon as `cancel`
// (may be null) is set.
absl::Status UploadFile(const std::string& path, ObjectUpload& upload,
                        const std::atomic<bool>* cancel) {
  ScopedFd fd(::open(path.c_str(), O_RDONLY | O_NOFOLLOW | O_CLOEXEC));
  if (!fd.valid()) return ErrnoError(errno, absl::StrCat("open ", path));
  TAILOR_ASSIGN_OR_RETURN(uint64_t size, RegularFileSize(fd.get(), path));
  std::string chunk;
  for (uint64_t offset = 0; offset < size; offset += chunk.size()) {
    if (cancel != nullptr && cancel->load()) {
      return absl::CancelledError(
          absl::StrCat("cancelled after ", offset, " of its ", size, " bytes"));
    }
    chunk.resize(std::min<uint64_t>(kUploadChunk, size - offset));
    TAILOR_RETURN_IF_ERROR(
        PReadFully(fd.get(), chunk.data(), chunk.size(), offset, path));
    TAILOR_RETURN_IF_ERROR(upload.Append(chunk));
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<std::unique_ptr<StagedOutput>> StagedOutput::CreateRemote(
    RemoteTarget remote, Kind kind, bool overwrite) {
  if (remote.store == nullptr) {
    return absl::InvalidArgumentError(
        absl::StrCat(remote.uri.ToString(), ": no object store"));
  }
  if (remote.scratch_dir.empty()) {
    return absl::FailedPreconditionError(absl::StrCat(
        remote.uri.ToString(),
        ": a remote output needs a local scratch directory to stage in"));
  }
  TAILOR_RETURN_IF_ERROR(CheckExisting(*remote.store, remote.uri, kind,
                                       overwrite, /*appeared=*/false));
  static std::atomic<uint64_t> counter{0};
  std::string base = Basename(remote.uri.key);
  if (base.size() > 100) base.resize(100);
  const std::string local = JoinPath(
      remote.scratch_dir, absl::StrCat("remote-", ::getpid(), "-",
                                       counter.fetch_add(1), "-", base));
  TAILOR_ASSIGN_OR_RETURN(std::unique_ptr<StagedOutput> o,
                          Create(local, kind, /*overwrite=*/false));
  o->path_ = remote.uri.ToString();
  o->overwrite_ = overwrite;
  o->remote_.reset(new Remote());
  o->remote_->store = std::move(remote.store);
  o->remote_->uri = std::move(remote.uri);
  o->remote_->scratch_dir = o->parent_path_;  // canonical
  o->remote_->local_name = Basename(local);
  return o;
}

absl::StatusOr<std::unique_ptr<StagedOutput>> CreateStagedOutput(
    const std::string& path, StagedOutput::Kind kind, bool overwrite,
    const UriResolver* resolver) {
  if (!IsRemoteUri(path)) return StagedOutput::Create(path, kind, overwrite);
  if (resolver == nullptr) {
    return absl::InvalidArgumentError(
        absl::StrCat(path, ": a remote output needs the job's resolver"));
  }
  TAILOR_ASSIGN_OR_RETURN(ObjectUri uri, resolver->CheckRemote(path, path));
  StagedOutput::RemoteTarget target;
  TAILOR_ASSIGN_OR_RETURN(target.store, resolver->StoreFor(uri));
  target.uri = std::move(uri);
  target.scratch_dir = resolver->scratch_dir();
  if (!target.scratch_dir.empty()) {
    TAILOR_RETURN_IF_ERROR(MakeDirectories(target.scratch_dir));
  }
  return StagedOutput::CreateRemote(std::move(target), kind, overwrite);
}

absl::Status StagedOutput::CheckRemotePublishable() const {
  return CheckExisting(*remote_->store, remote_->uri, kind_, overwrite_,
                       /*appeared=*/true);
}

absl::Status StagedOutput::Upload(const std::atomic<bool>* cancel) {
  if (remote_ == nullptr || remote_->uploaded) return absl::OkStatus();
  std::vector<std::pair<ObjectUri, std::string>> files;  // target, local
  if (kind_ == Kind::kFile) {
    files.emplace_back(remote_->uri, staging_path());
  } else {
    std::vector<std::string> rel;
    TAILOR_RETURN_IF_ERROR(ListTree(staging_path(), "", &rel));
    // An index (and any other *.json) last: a reader that sees the index
    // sees its shards.
    std::stable_partition(rel.begin(), rel.end(), [](const std::string& n) {
      return !absl::EndsWith(n, ".index.json");
    });
    for (const std::string& r : rel) {
      files.emplace_back(remote_->uri.Child(r), JoinPath(staging_path(), r));
    }
  }
  for (auto& [target, local] : files) {
    TAILOR_ASSIGN_OR_RETURN(std::unique_ptr<ObjectUpload> upload,
                            remote_->store->BeginUpload(target));
    Remote* const r = remote_.get();
    upload->set_on_started([r, uri = target](const std::string& id) {
      return r->Record(uri, id);
    });
    Remote::Pending pending{target, std::move(upload)};
    remote_->pending.push_back(std::move(pending));
    const absl::Status s =
        UploadFile(local, *remote_->pending.back().upload, cancel);
    if (!s.ok()) {
      return absl::Status(s.code(), absl::StrCat("upload ", target.ToString(),
                                                 ": ", s.message()));
    }
  }
  remote_->uploaded = true;
  return absl::OkStatus();
}

absl::Status StagedOutput::PublishRemote() {
  if (!remote_->uploaded) TAILOR_RETURN_IF_ERROR(Upload());
  published_ = true;  // from the first commit on, Rollback has work
  for (Remote::Pending& p : remote_->pending) {
    const absl::Status s = p.upload->Commit();
    if (!s.ok()) {
      return absl::Status(s.code(), absl::StrCat("commit ", p.uri.ToString(),
                                                 ": ", s.message()));
    }
    p.upload.reset();
    remote_->committed.push_back(p.uri);
  }
  remote_->pending.clear();
  return absl::OkStatus();
}

absl::Status StagedOutput::RollbackRemote() {
  std::string errors;
  for (const ObjectUri& uri : remote_->committed) {
    const absl::Status s = remote_->store->Delete(uri);
    if (!s.ok()) absl::StrAppend(&errors, "; ", s.message());
  }
  remote_->committed.clear();
  published_ = false;
  if (!errors.empty()) {
    return absl::DataLossError(
        absl::StrCat("roll back ", path_,
                     ": could not delete every committed object", errors));
  }
  return absl::OkStatus();
}

void StagedOutput::FinalizeRemote() {
  if (overwrite_ && kind_ == Kind::kDirectory) {
    // Objects of the replaced output that the new one does not have.
    std::set<std::string> keep;
    for (const ObjectUri& uri : remote_->committed) keep.insert(uri.key);
    absl::StatusOr<std::vector<ObjectUri>> old =
        remote_->store->List(AsPrefix(remote_->uri));
    if (old.ok()) {
      for (const ObjectUri& uri : *old) {
        if (keep.count(uri.key) == 0) (void)remote_->store->Delete(uri);
      }
    }
  }
  fd_ = ScopedFd();
  (void)RemoveTreeAt(parent_fd(), staging_name_, staging_path());
}

}  // namespace tailor
