#ifndef TAILOR_TESTS_STORAGE_REMOTE_FIXTURE_H_
#define TAILOR_TESTS_STORAGE_REMOTE_FIXTURE_H_

// Runs tests/storage/remote_fixture.py (loopback s3rver, nginx, a Hub
// endpoint, a capture server, a fault proxy; boto3 and botocore as the
// independent client) from C++ tests. Torch-free; uses posix_spawn, never
// fork() after LibTorch.

#include <sys/types.h>

#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace tailor::testing {

// The fixture script (under $TAILOR_SOURCE_DIR).
std::string RemoteFixturePath();

// A server the fixture runs in the background until this object dies
// (its stdin is closed; then SIGTERM, SIGKILL as a last resort).
class FixtureServer {
 public:
  // Starts `remote_fixture.py args...` and waits (up to `deadline_s`) for
  // its {"port": N} line.
  static absl::StatusOr<FixtureServer> Start(
      const std::vector<std::string>& args, int deadline_s = 180);
  FixtureServer(FixtureServer&& o) noexcept;
  FixtureServer& operator=(FixtureServer&&) = delete;
  ~FixtureServer();

  int port() const { return port_; }

 private:
  FixtureServer() = default;
  pid_t pid_ = -1;
  int stdin_fd_ = -1;
  int port_ = 0;
};

// Runs `remote_fixture.py args...` to completion (up to `deadline_s`):
// its stdout, or an error with its exit status and stderr. `exit_code`,
// if given, receives the status and a non-zero one is no error.
absl::StatusOr<std::string> RunFixture(const std::vector<std::string>& args,
                                       int* exit_code = nullptr,
                                       int deadline_s = 120);

}  // namespace tailor::testing

#endif  // TAILOR_TESTS_STORAGE_REMOTE_FIXTURE_H_
