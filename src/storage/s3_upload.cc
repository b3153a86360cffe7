// s3:// uploads: one PUT or a multipart upload (storage/s3_upload.h).

#include "storage/s3_upload.h"

#include <algorithm>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "storage/s3_store.h"
#include "storage/uri_encode.h"
#include "storage/xml_extract.h"
#include "util/log.h"
#include "util/quote.h"
#include "util/status_macros.h"

namespace tailor {
namespace {

// S3's limits: 10000 parts; one PUT of at most 5 GiB.
constexpr int kMaxParts = 10000;
constexpr uint64_t kMaxSinglePut = uint64_t{5} << 30;

}  // namespace

S3Upload::S3Upload(std::shared_ptr<S3Store> store, ObjectUri uri,
                   uint64_t part_bytes)
    : store_(std::move(store)),
      uri_(std::move(uri)),
      subject_(uri_.ToString()),
      part_bytes_(part_bytes) {}

S3Upload::~S3Upload() {
  if (state_ != State::kCommitted && state_ != State::kAborted) {
    absl::Status s = Abort();
    if (!s.ok()) {
      Log(LogLevel::kWarning, "",
          absl::StrCat("abandoning the upload of ", subject_, ": ",
                       s.message()));
    }
  }
}

absl::Status S3Upload::Fail(absl::Status s) {
  state_ = State::kFailed;
  failure_ = s;
  return s;
}

absl::Status S3Upload::Append(absl::string_view bytes) {
  if (state_ == State::kFailed) return failure_;
  if (state_ != State::kOpen) {
    return absl::FailedPreconditionError(
        absl::StrCat("upload ", subject_, ": append after commit or abort"));
  }
  total_bytes_ += bytes.size();
  while (!bytes.empty()) {
    const size_t room = part_bytes_ - buffer_.size();
    const size_t take = std::min(room, bytes.size());
    buffer_.append(bytes.data(), take);
    bytes.remove_prefix(take);
    if (buffer_.size() == part_bytes_) {
      if (upload_id_.empty()) {
        absl::Status s = Create();
        if (!s.ok()) return Fail(s);
      }
      absl::Status s = SendPart(buffer_);
      if (!s.ok()) return Fail(s);
      buffer_.clear();
    }
  }
  return absl::OkStatus();
}

absl::Status S3Upload::Create() {
  HttpRequest req;
  req.method = "POST";
  req.url = store_->Url(uri_.bucket, uri_.key, "uploads=");
  // Creating an upload twice only leaves an extra pending upload (never a
  // visible object), so the transport may retry it.
  req.idempotent = true;
  TAILOR_ASSIGN_OR_RETURN(HttpResponse r,
                          store_->Send(std::move(req), "", subject_));
  if (r.status != 200) {
    return S3Store::ErrorFor(r, "CreateMultipartUpload", subject_);
  }
  absl::StatusOr<std::string> id = XmlFirstText(r.body, "UploadId");
  if (!id.ok() || id->empty()) {
    return absl::DataLossError(absl::StrCat("CreateMultipartUpload ", subject_,
                                            ": no UploadId in the response"));
  }
  upload_id_ = *std::move(id);
  return Started(upload_id_);
}

absl::Status S3Upload::SendPart(absl::string_view bytes) {
  const int number = static_cast<int>(parts_.size()) + 1;
  if (number > kMaxParts) {
    return absl::InvalidArgumentError(
        absl::StrCat("upload ", subject_, ": more than ", kMaxParts,
                     " parts of ", part_bytes_, " bytes"));
  }
  HttpRequest req;
  req.method = "PUT";
  // Query keys sorted: partNumber < uploadId.
  req.url =
      store_->Url(uri_.bucket, uri_.key,
                  absl::StrCat("partNumber=", number,
                               "&uploadId=", UriEncode(upload_id_, false)));
  TAILOR_ASSIGN_OR_RETURN(HttpResponse r,
                          store_->Send(std::move(req), bytes, subject_));
  if (r.status != 200) return S3Store::ErrorFor(r, "UploadPart", subject_);
  const std::string etag = r.Header("etag");
  if (etag.empty()) {
    return absl::DataLossError(
        absl::StrCat("UploadPart ", subject_, ": no ETag in the response"));
  }
  parts_.emplace_back(number, etag);
  return absl::OkStatus();
}

absl::Status S3Upload::PutWhole() {
  if (buffer_.size() > kMaxSinglePut) {
    return absl::InvalidArgumentError(
        absl::StrCat("upload ", subject_, ": larger than one PUT allows"));
  }
  HttpRequest req;
  req.method = "PUT";
  req.url = store_->Url(uri_.bucket, uri_.key, "");
  TAILOR_ASSIGN_OR_RETURN(HttpResponse r,
                          store_->Send(std::move(req), buffer_, subject_));
  if (r.status != 200) return S3Store::ErrorFor(r, "PUT", subject_);
  return absl::OkStatus();
}

absl::Status S3Upload::Complete() {
  std::string xml = "<CompleteMultipartUpload>";
  for (const auto& [number, etag] : parts_) {
    absl::StrAppend(&xml, "<Part><PartNumber>", number, "</PartNumber><ETag>",
                    XmlEscape(etag), "</ETag></Part>");
  }
  absl::StrAppend(&xml, "</CompleteMultipartUpload>");
  // A transport failure re-sends the complete (see s3_store.h).
  constexpr int attempts = 3;
  absl::Status last;
  for (int i = 1; i <= attempts; ++i) {
    HttpRequest req;
    req.method = "POST";
    req.url =
        store_->Url(uri_.bucket, uri_.key,
                    absl::StrCat("uploadId=", UriEncode(upload_id_, false)));
    req.headers.emplace_back("Content-Type", "application/xml");
    req.idempotent = false;
    absl::StatusOr<HttpResponse> r =
        store_->Send(std::move(req), xml, subject_);
    if (!r.ok()) {
      last = r.status();
      // No response (a connection reset or timeout after sending): the
      // complete may have happened; re-send it, and NoSuchUpload then
      // means it did.
      if (last.code() != absl::StatusCode::kUnavailable) return last;
      continue;
    }
    // S3 may answer 200 with an <Error> body.
    absl::StatusOr<std::string> code = XmlFirstText(r->body, "Code");
    const bool error_body = r->status == 200 && code.ok() && !code->empty();
    if (r->status == 200 && !error_body) return absl::OkStatus();
    if (i > 1 && code.ok() && *code == "NoSuchUpload") {
      // An earlier complete went through: the object must be ours.
      TAILOR_ASSIGN_OR_RETURN(ObjectInfo info, store_->Stat(uri_));
      if (info.size == total_bytes_) return absl::OkStatus();
      return absl::DataLossError(absl::StrCat(
          "CompleteMultipartUpload ", subject_, ": the upload vanished and ",
          "the object holds ", info.size, " bytes, not ", total_bytes_));
    }
    if (error_body) {
      // Not re-sent: the server answered (see s3_store.h).
      return absl::UnavailableError(absl::StrCat("CompleteMultipartUpload ",
                                                 subject_, ": failed (",
                                                 Quote(*code, 64), ")"));
    }
    return S3Store::ErrorFor(*r, "CompleteMultipartUpload", subject_);
  }
  return last;
}

absl::Status S3Upload::Commit() {
  if (state_ == State::kFailed) return failure_;
  if (state_ != State::kOpen) {
    return absl::FailedPreconditionError(
        absl::StrCat("upload ", subject_, ": commit after commit or abort"));
  }
  if (upload_id_.empty()) {
    absl::Status s = PutWhole();
    if (!s.ok()) return Fail(s);
  } else {
    if (!buffer_.empty()) {
      absl::Status s = SendPart(buffer_);
      if (!s.ok()) return Fail(s);
      buffer_.clear();
    }
    absl::Status s = Complete();
    if (!s.ok()) return Fail(s);
  }
  buffer_.clear();
  buffer_.shrink_to_fit();
  state_ = State::kCommitted;
  return absl::OkStatus();
}

absl::Status S3Upload::Abort() {
  if (state_ == State::kCommitted || state_ == State::kAborted) {
    return absl::OkStatus();
  }
  state_ = State::kAborted;
  buffer_.clear();
  buffer_.shrink_to_fit();
  if (upload_id_.empty()) return absl::OkStatus();
  return store_->AbortUpload(uri_, upload_id_);
}

}  // namespace tailor
