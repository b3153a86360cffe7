#include "testing/temp_dir.h"

#include <stdlib.h>

#include <cstdlib>
#include <stdexcept>

#include "absl/strings/str_cat.h"
#include "util/file_util.h"

namespace tailor::testing {

TempDir::TempDir() {
  const char* base = std::getenv("TMPDIR");
  std::string tmpl =
      absl::StrCat(base && *base ? base : "/tmp", "/tailor-test-XXXXXX");
  if (::mkdtemp(tmpl.data()) == nullptr) {
    throw std::runtime_error("mkdtemp failed for " + tmpl);
  }
  path_ = tmpl;
}

TempDir::~TempDir() { (void)RemoveAll(path_); }

std::string TempDir::Join(absl::string_view name) const {
  return JoinPath(path_, name);
}

}  // namespace tailor::testing
