#include "server/serving_state.h"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <utility>

#include "absl/strings/str_cat.h"
#include "util/errno_status.h"
#include "util/log.h"

namespace tailor::server {

absl::Status ProbeWritableDirectory(const std::string& dir) {
  const std::string path = absl::StrCat(dir, "/.tailord-probe-", ::getpid());
  const int fd =
      ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  if (fd < 0) {
    return ErrnoError(errno, absl::StrCat("data directory: creating ", path));
  }
  absl::Status status;
  if (::write(fd, "1", 1) != 1) {
    status = ErrnoError(errno, absl::StrCat("data directory: writing ", path));
  } else if (::fsync(fd) != 0) {
    status = ErrnoError(errno, absl::StrCat("data directory: fsync of ", path));
  }
  if (::close(fd) != 0 && status.ok()) {
    status = ErrnoError(errno, absl::StrCat("data directory: closing ", path));
  }
  if (::unlink(path.c_str()) != 0 && status.ok()) {
    status = ErrnoError(errno, absl::StrCat("data directory: removing ", path));
  }
  return status;
}

ServingState::ServingState(Options options) : options_(std::move(options)) {}

ServingState::~ServingState() {
  {
    absl::MutexLock lock(&mu_);
    stop_ = true;
  }
  if (thread_.joinable()) thread_.join();
}

void ServingState::Start() {
  const absl::Status probe = ProbeWritableDirectory(options_.data_dir);
  absl::MutexLock lock(&mu_);
  if (started_) return;
  Record(probe);
  started_ = true;
  published_ = !ServingLocked();  // so that Publish reports the first state
  Publish();
  thread_ = std::thread([this] { ProbeLoop(); });
}

void ServingState::BeginDrain() {
  absl::MutexLock lock(&mu_);
  draining_ = true;
  Publish();
}

bool ServingState::serving() const {
  absl::MutexLock lock(&mu_);
  return ServingLocked();
}

std::string ServingState::reason() const {
  absl::MutexLock lock(&mu_);
  if (draining_) return "draining";
  if (!started_) return "not started";
  return data_dir_error_;
}

void ServingState::ProbeLoop() {
  absl::MutexLock lock(&mu_);
  while (true) {
    mu_.AwaitWithTimeout(absl::Condition(this, &ServingState::StopProbing),
                         options_.probe_interval);
    if (StopProbing()) return;
    // The probe may block (a hung network volume): without the lock, so
    // that serving() and BeginDrain() still answer.
    mu_.Unlock();
    const absl::Status probe = ProbeWritableDirectory(options_.data_dir);
    mu_.Lock();
    if (StopProbing()) return;
    Record(probe);
    Publish();
  }
}

void ServingState::Record(const absl::Status& probe) {
  std::string error = probe.ok() ? "" : std::string(probe.message());
  if (error == data_dir_error_) return;
  if (error.empty()) {
    Log(LogLevel::kInfo, "", "data directory writable again: serving");
  } else {
    Log(LogLevel::kError, "",
        absl::StrCat(error,
                     "; health NOT_SERVING and /readyz 503 until a probe "
                     "writes there again"));
  }
  data_dir_error_ = std::move(error);
}

void ServingState::Publish() {
  const bool now = ServingLocked();
  if (now == published_) return;
  published_ = now;
  if (options_.on_change) options_.on_change(now);
}

}  // namespace tailor::server
