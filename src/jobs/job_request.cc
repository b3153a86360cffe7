#include "jobs/job_request.h"

#include <sys/stat.h>

#include <cstdint>

#include "absl/random/random.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/synchronization/mutex.h"
#include "util/field_error.h"
#include "util/quote.h"
#include "util/status_macros.h"

namespace tailor::jobs {
namespace {

constexpr int kMaxPriority = 9;
constexpr size_t kMaxRequestId = 36;
constexpr size_t kMaxLabels = 16;
constexpr size_t kMaxLabelLength = 63;

absl::Status CheckLabelText(absl::string_view field, absl::string_view text) {
  if (text.empty() || text.size() > kMaxLabelLength) {
    return FieldError(field, "must be 1 to 63 characters");
  }
  for (char c : text) {
    if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_' ||
          c == '-')) {
      return FieldError(field, absl::StrCat("'", text,
                                            "' may contain only a-z, 0-9, "
                                            "'_' and '-'"));
    }
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status CheckCreateJobRequest(const CreateJobRequest& r) {
  if (r.priority < 0 || r.priority > kMaxPriority) {
    return FieldError("priority", absl::StrCat("must be in 0..", kMaxPriority,
                                               ", not ", r.priority));
  }
  if (r.request_id.size() > kMaxRequestId) {
    return FieldError("request_id", "must be at most 36 characters");
  }
  for (char c : r.request_id) {
    if (c < 0x21 || c > 0x7e) {
      return FieldError("request_id", "must be printable ASCII without spaces");
    }
  }
  if (r.labels.size() > kMaxLabels) {
    return FieldError("labels", "at most 16 labels");
  }
  for (const auto& [k, v] : r.labels) {
    TAILOR_RETURN_IF_ERROR(CheckLabelText("labels key", k));
    TAILOR_RETURN_IF_ERROR(CheckLabelText(absl::StrCat("labels[", k, "]"), v));
  }
  return absl::OkStatus();
}

std::string NewJobId() {
  static absl::Mutex mu;
  static absl::BitGen* gen = new absl::BitGen();
  absl::MutexLock lock(&mu);
  return absl::StrFormat("%016x", absl::Uniform<uint64_t>(*gen));
}

bool PathsOverlap(absl::string_view a, absl::string_view b) {
  if (a.size() > b.size()) std::swap(a, b);
  if (!absl::StartsWith(b, a)) return false;
  return b.size() == a.size() || a == "/" || b[a.size()] == '/';
}

absl::Status CheckOutputsDisjoint(const OutputPaths& mine,
                                  const OutputPaths& theirs,
                                  absl::string_view other) {
  for (const auto& [other_field, their_path] : theirs) {
    for (const auto& [field, path] : mine) {
      if (PathsOverlap(path, their_path)) {
        return absl::FailedPreconditionError(
            absl::StrCat(field, ": '", path, "' overlaps the output ",
                         other_field, " ('", their_path, "') of ", other,
                         ", which is queued or running; wait for it or choose "
                         "another path"));
      }
    }
  }
  return absl::OkStatus();
}

absl::Status CheckOutputsCreatable(const OutputPaths& outputs, bool overwrite) {
  for (const auto& [field, path] : outputs) {
    struct stat st;
    if (::lstat(path.c_str(), &st) == 0) {
      if (!overwrite) {
        return absl::AlreadyExistsError(absl::StrCat(
            field, ": ", Quote(path),
            " already exists; choose another path, or set overwrite: true "
            "(tailorctl --overwrite) to replace it"));
      }
      continue;
    }
    // Missing: its missing parents are created when the job runs (inside
    // the allowed root the resolver checked); the nearest existing ancestor
    // must be a directory for that.
    std::string ancestor = path;
    for (;;) {
      const size_t slash = ancestor.rfind('/');
      if (slash == std::string::npos || ancestor == "/") break;
      ancestor.resize(slash == 0 ? 1 : slash);
      if (::lstat(ancestor.c_str(), &st) != 0) continue;
      if (S_ISDIR(st.st_mode)) break;
      if (S_ISLNK(st.st_mode) && ::stat(ancestor.c_str(), &st) == 0 &&
          S_ISDIR(st.st_mode)) {
        break;
      }
      return absl::InvalidArgumentError(absl::StrCat(
          field, ": ", Quote(path), " cannot be created: ", Quote(ancestor),
          " is not a directory"));
    }
  }
  return absl::OkStatus();
}

}  // namespace tailor::jobs
