#ifndef TAILOR_TESTS_TESTING_TEMP_DIR_H_
#define TAILOR_TESTS_TESTING_TEMP_DIR_H_

#include <string>

#include "absl/strings/string_view.h"

namespace tailor::testing {

// A fresh directory under $TMPDIR (or /tmp), removed on destruction.
// Torch-free, for tests of the torch-free libraries.
class TempDir {
 public:
  TempDir();
  ~TempDir();
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  const std::string& path() const { return path_; }
  std::string Join(absl::string_view name) const;

 private:
  std::string path_;
};

}  // namespace tailor::testing

#endif  // TAILOR_TESTS_TESTING_TEMP_DIR_H_
