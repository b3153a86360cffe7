#include "util/errno_status.h"

#include <cerrno>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"

namespace tailor {
namespace {

TEST(ErrnoErrorTest, FileOperationReading) {
  absl::Status s = ErrnoError(ENOENT, "open /x");
  EXPECT_EQ(s.code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(s.message(), absl::StrCat("open /x: ", std::strerror(ENOENT)));
  EXPECT_EQ(ErrnoError(ENOTDIR, "c").code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(ErrnoError(EROFS, "c").code(), absl::StatusCode::kPermissionDenied);
  EXPECT_EQ(ErrnoError(EDQUOT, "c").code(),
            absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(ErrnoError(EEXIST, "c").code(), absl::StatusCode::kAlreadyExists);
  EXPECT_EQ(ErrnoError(ELOOP, "c").code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(ErrnoError(EIO, "c").code(), absl::StatusCode::kInternal);
}

TEST(ErrnoErrorTest, PathResolutionReading) {
  constexpr ErrnoReading kPath = ErrnoReading::kPathResolution;
  absl::Status s = ErrnoError(ENOENT, "pretrained cannot be resolved", kPath);
  EXPECT_EQ(s.code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(s.message(), absl::StrCat("pretrained cannot be resolved: ",
                                      std::strerror(ENOENT)));
  EXPECT_EQ(ErrnoError(ENOTDIR, "c", kPath).code(),
            absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(ErrnoError(ELOOP, "c", kPath).code(),
            absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(ErrnoError(EACCES, "c", kPath).code(),
            absl::StatusCode::kPermissionDenied);
}

}  // namespace
}  // namespace tailor
