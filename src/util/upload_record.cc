// Durable records of started multipart uploads and the cleanup of a remote
// output scratch directory after a crash (util/upload_record.h).

#include "util/upload_record.h"

#include <dirent.h>
#include <fcntl.h>
#include <sys/file.h>
#include <unistd.h>

#include <cstdlib>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "util/errno_status.h"
#include "util/log.h"
#include "util/staged_output.h"
#include "util/status_macros.h"

namespace tailor {
namespace {

constexpr absl::string_view kRecordSuffix = ".tailor-uploads";
constexpr absl::string_view kRemotePrefix = ".remote-";
constexpr char kStageInfix[] = ".tailor-stage-";
// A record lists one output's files; far below this.
constexpr uint64_t kMaxRecordBytes = 16 << 20;

std::vector<std::string> ListNames(int dirfd) {
  std::vector<std::string> names;
  const int list_fd = ::openat(dirfd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (list_fd < 0) return names;
  DIR* d = ::fdopendir(list_fd);
  if (d == nullptr) {
    ::close(list_fd);
    return names;
  }
  while (struct dirent* e = ::readdir(d)) {
    const std::string entry = e->d_name;
    if (entry != "." && entry != "..") names.push_back(entry);
  }
  ::closedir(d);
  return names;
}

// Aborts the uploads listed in `text` (the record at `label`). True when
// the record may go (nothing was UNAVAILABLE).
bool AbortListed(const std::string& text, const std::string& label,
                 ObjectStoreProvider* provider, RemoteScratchCleanup* out) {
  bool done = true;
  for (absl::string_view line : absl::StrSplit(text, '\n', absl::SkipEmpty())) {
    const std::vector<absl::string_view> fields = absl::StrSplit(line, '\t');
    absl::StatusOr<ObjectUri> uri =
        fields.size() == 2 ? ParseObjectUri(fields[0])
                           : absl::InvalidArgumentError("not <uri>\\t<id>");
    if (!uri.ok() || fields[1].empty()) {
      Log(LogLevel::kWarning, "",
          absl::StrCat(label, ": skipping a malformed line (",
                       uri.ok() ? "no upload id" : uri.status().message(),
                       ")"));
      continue;
    }
    absl::Status s =
        provider == nullptr
            ? absl::FailedPreconditionError("remote storage not configured")
            : absl::OkStatus();
    if (s.ok()) {
      absl::StatusOr<std::shared_ptr<ObjectStore>> store =
          provider->StoreFor(*uri);
      s = store.ok() ? (*store)->AbortUpload(*uri, std::string(fields[1]))
                     : store.status();
    }
    const std::string what =
        absl::StrCat("the upload of ", uri->ToString(), " (id ",
                     fields[1].substr(0, 128), ") a stopped process began");
    if (s.ok()) {
      ++out->aborted;
      Log(LogLevel::kInfo, "", absl::StrCat("aborted ", what));
      continue;
    }
    ++out->abort_failures;
    if (absl::IsUnavailable(s)) done = false;
    Log(LogLevel::kWarning, "",
        absl::StrCat("could not abort ", what, ": ", s.message(),
                     done ? "" : "; retried at the next start"));
  }
  return done;
}

}  // namespace

absl::StatusOr<std::unique_ptr<UploadRecord>> UploadRecord::Create(
    const std::string& dir, absl::string_view name) {
  const std::string path =
      JoinPath(dir, absl::StrCat(".", name, kRecordSuffix));
  ScopedFd fd(::open(path.c_str(),
                     O_RDWR | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600));
  if (!fd.valid()) return ErrnoError(errno, absl::StrCat("create ", path));
  if (::flock(fd.get(), LOCK_EX | LOCK_NB) != 0) {
    return ErrnoError(errno, absl::StrCat("lock ", path));
  }
  return std::unique_ptr<UploadRecord>(new UploadRecord(path, std::move(fd)));
}

UploadRecord::~UploadRecord() {
  if (!keep_) (void)::unlink(path_.c_str());
}

absl::Status UploadRecord::Add(const ObjectUri& uri,
                               absl::string_view upload_id) {
  const std::string line = absl::StrCat(uri.ToString(), "\t", upload_id, "\n");
  TAILOR_RETURN_IF_ERROR(
      PWriteFully(fd_.get(), line.data(), line.size(), size_, path_));
  if (::fdatasync(fd_.get()) != 0) {
    return ErrnoError(errno, absl::StrCat("fdatasync ", path_));
  }
  size_ += line.size();
  return absl::OkStatus();
}

RemoteScratchCleanup CleanRemoteScratch(const std::string& dir,
                                        ObjectStoreProvider* provider) {
  RemoteScratchCleanup out;
  // Canonical (the data directory may be given relative, or lie behind a
  // symlink); from here on nothing follows a symlink.
  char* real = ::realpath(dir.c_str(), nullptr);
  if (real == nullptr) return out;
  const std::string canonical = real;
  std::free(real);
  absl::StatusOr<ScopedFd> opened = OpenDirectoryNoFollow(canonical);
  if (!opened.ok()) return out;
  const int dirfd = opened->get();
  std::vector<std::string> finals;
  for (const std::string& entry : ListNames(dirfd)) {
    if (!absl::StartsWith(entry, kRemotePrefix)) continue;
    if (absl::EndsWith(entry, kRecordSuffix)) {
      ScopedFd fd(::openat(dirfd, entry.c_str(),
                           O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC));
      if (!fd.valid()) continue;
      if (::flock(fd.get(), LOCK_EX | LOCK_NB) != 0) continue;  // live
      const std::string label = JoinPath(canonical, entry);
      absl::StatusOr<std::string> text =
          ReadOpenFileToString(fd.get(), label, kMaxRecordBytes);
      ++out.records;
      if (!text.ok()) {
        Log(LogLevel::kWarning, "",
            absl::StrCat("removing unreadable ", label, ": ",
                         text.status().message()));
      } else if (!AbortListed(*text, label, provider, &out)) {
        continue;  // kept for the next start
      }
      (void)::unlinkat(dirfd, entry.c_str(), 0);
      continue;
    }
    const size_t stage = entry.rfind(kStageInfix);
    if (stage != std::string::npos && stage > 1) {
      finals.push_back(entry.substr(1, stage - 1));
    }
  }
  if (!finals.empty())
    out.staging_removed = RemoveStaleStaging(canonical, finals);
  return out;
}

}  // namespace tailor
