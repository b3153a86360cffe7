#include "server/result_reactor.h"

#include <algorithm>
#include <utility>

#include "absl/strings/str_cat.h"
#include "server/raw_message.h"

namespace tailor::server {

namespace v1 = ::tailor::v1;

ResultReactor::ResultReactor(jobs::JobManager* manager,
                             BlockingExecutor* executor, RpcCounter* rpcs,
                             StreamRegistry* registry, jobs::Caller caller)
    : manager_(manager),
      executor_(executor),
      rpcs_(rpcs),
      registry_(registry),
      caller_(std::move(caller)) {}

ResultReactor::~ResultReactor() {
  if (registered_) registry_->Remove(this);
}

void ResultReactor::Start(std::string name,
                          v1::ReadJobResultRequest::Kind kind) {
  if (!registry_->Add(this)) {
    FinishOnce(absl::ResourceExhaustedError(absl::StrCat(
        "ReadJobResult: ", registry_->limit(),
        " result streams are open already (tailord --max-result-streams); "
        "retry when one has finished")));
    return;
  }
  registered_ = true;
  if (registry_->closed()) {
    FinishOnce(ShuttingDown());
    return;
  }
  Post([this, name = std::move(name), kind] {
    absl::Status s = Open(name, kind);
    if (!s.ok()) {
      FinishOnce(s);
      return;
    }
    ReadNext();
  });
}

void ResultReactor::OnWriteDone(bool ok) {
  if (!ok) {
    FinishOnce(absl::CancelledError("the reader went away"));
  } else if (last_) {
    FinishOnce(absl::OkStatus());
  } else if (registry_->closed()) {
    FinishOnce(ShuttingDown());
  } else {
    Post([this] { ReadNext(); });
  }
}

void ResultReactor::OnCancel() {
  FinishOnce(absl::CancelledError("the reader cancelled"));
}

void ResultReactor::OnDone() {
  bool last;
  {
    absl::MutexLock lock(&mu_);
    done_ = true;
    last = pending_ == 0;
  }
  if (last) delete this;
}

absl::Status ResultReactor::ShuttingDown() {
  return absl::UnavailableError(
      "the server is shutting down; read the result again after the restart "
      "or from another replica");
}

absl::Status ResultReactor::Open(const std::string& name,
                                 v1::ReadJobResultRequest::Kind kind) {
  if (kind != v1::ReadJobResultRequest::PATCH &&
      kind != v1::ReadJobResultRequest::REPORT) {
    return absl::InvalidArgumentError("kind: must be PATCH or REPORT");
  }
  absl::StatusOr<jobs::JobManager::Result> r = manager_->GetResult(
      name,
      kind == v1::ReadJobResultRequest::PATCH ? jobs::ResultKind::kPatch
                                              : jobs::ResultKind::kReport,
      caller_);
  if (!r.ok()) return r.status();
  result_ = std::move(*r);
  if (!result_.is_inline) {
    absl::StatusOr<ScopedFd> fd = OpenForRead(result_.path);
    if (!fd.ok()) return fd.status();
    absl::StatusOr<uint64_t> size = RegularFileSize(fd->get(), result_.path);
    if (!size.ok()) return size.status();
    fd_ = std::move(*fd);
    size_ = *size;
    // Pinned at success (issue #10 point 4): checked before the first
    // byte goes out, and again over the bytes streamed (ReadNext).
    if (size_ != result_.size) return Changed();
    Sha256 whole;
    std::string buffer;
    for (uint64_t at = 0; at < size_;) {
      const size_t n = static_cast<size_t>(
          std::min<uint64_t>(kResultChunkBytes, size_ - at));
      buffer.resize(n);
      absl::Status s =
          PReadFully(fd_.get(), buffer.data(), n, at, result_.path);
      if (!s.ok()) return s;
      whole.Update(buffer);
      at += n;
    }
    if (whole.FinalHex() != result_.sha256) return Changed();
  } else {
    size_ = result_.data.size();
  }
  return absl::OkStatus();
}

absl::Status ResultReactor::Changed() const {
  return absl::DataLossError(absl::StrCat(
      "the patch file ", result_.path,
      " changed since the job succeeded (recorded ", result_.size,
      " bytes, sha256 ", result_.sha256, "); refusing to serve other bytes"));
}

void ResultReactor::ReadNext() {
  if (registry_->closed()) {
    FinishOnce(ShuttingDown());
    return;
  }
  const size_t n = static_cast<size_t>(
      std::min<uint64_t>(kResultChunkBytes, size_ - offset_));
  chunk_.Clear();
  chunk_.set_offset(offset_);
  chunk_.set_total_size(size_);
  std::string* data = chunk_.mutable_data();
  if (result_.is_inline) {
    data->assign(result_.data, offset_, n);
  } else {
    data->resize(n);
    absl::Status s =
        PReadFully(fd_.get(), data->data(), n, offset_, result_.path);
    if (!s.ok()) {
      FinishOnce(s);
      return;
    }
  }
  sha_.Update(*data);
  offset_ += n;
  if (offset_ == size_) {
    const std::string digest = sha_.FinalHex();
    if (!result_.is_inline && digest != result_.sha256) {
      FinishOnce(Changed());
      return;
    }
    chunk_.set_sha256(digest);
    last_ = true;
  }
  if (absl::Status s = SerializeResponse(chunk_, &buffer_); !s.ok()) {
    FinishOnce(s);
    return;
  }
  absl::MutexLock lock(&mu_);
  if (!finished_) StartWrite(&buffer_);
}

void ResultReactor::Post(std::function<void()> task) {
  {
    absl::MutexLock lock(&mu_);
    ++pending_;
  }
  executor_->Post([this, task = std::move(task)] {
    task();
    bool last;
    {
      absl::MutexLock lock(&mu_);
      --pending_;
      last = done_ && pending_ == 0;
    }
    if (last) delete this;
  });
}

void ResultReactor::FinishOnce(const absl::Status& status) {
  absl::MutexLock lock(&mu_);
  if (finished_) return;
  finished_ = true;
  Finish(rpcs_->Outcome("ReadJobResult", status));
}

}  // namespace tailor::server
