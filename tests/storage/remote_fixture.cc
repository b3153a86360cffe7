// Spawning tests/storage/remote_fixture.py (remote_fixture.h).

#include "storage/remote_fixture.h"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"

extern char** environ;

namespace tailor::testing {
namespace {

struct Spawned {
  pid_t pid = -1;
  int in = -1, out = -1, err = -1;
};

// `capture_err`: a pipe for stderr; else the child shares the test's.
absl::StatusOr<Spawned> Spawn(const std::vector<std::string>& args,
                              bool capture_err) {
  std::vector<std::string> argv = {"/usr/bin/python3", RemoteFixturePath()};
  argv.insert(argv.end(), args.begin(), args.end());
  std::vector<char*> cargv;
  for (std::string& a : argv) cargv.push_back(a.data());
  cargv.push_back(nullptr);
  int in[2], out[2], err[2];
  if (pipe2(in, O_CLOEXEC) != 0 || pipe2(out, O_CLOEXEC) != 0 ||
      pipe2(err, O_CLOEXEC) != 0) {
    return absl::InternalError("pipe failed");
  }
  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_adddup2(&fa, in[0], 0);
  posix_spawn_file_actions_adddup2(&fa, out[1], 1);
  if (capture_err) posix_spawn_file_actions_adddup2(&fa, err[1], 2);
  Spawned s;
  const int rc =
      posix_spawn(&s.pid, cargv[0], &fa, nullptr, cargv.data(), environ);
  posix_spawn_file_actions_destroy(&fa);
  close(in[0]);
  close(out[1]);
  close(err[1]);
  if (!capture_err) close(err[0]);
  if (rc != 0) {
    close(in[1]);
    close(out[0]);
    if (capture_err) close(err[0]);
    return absl::InternalError(absl::StrCat("posix_spawn: ", rc));
  }
  s.in = in[1];
  s.out = out[0];
  s.err = capture_err ? err[0] : -1;
  return s;
}

// Reads what is available from `fd` into `buf` until `until` says stop,
// EOF, or the deadline. Returns false on timeout.
bool ReadUntil(int fd, std::string* buf, absl::Time deadline,
               bool (*until)(const std::string&)) {
  char chunk[4096];
  while (!until(*buf)) {
    const int64_t left = absl::ToInt64Milliseconds(deadline - absl::Now());
    if (left <= 0) return false;
    pollfd p{fd, POLLIN, 0};
    if (poll(&p, 1, static_cast<int>(std::min<int64_t>(left, 1000))) <= 0) {
      continue;
    }
    const ssize_t n = read(fd, chunk, sizeof chunk);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return true;  // EOF
    buf->append(chunk, n);
  }
  return true;
}

bool HasLine(const std::string& s) { return s.find('\n') != std::string::npos; }
bool Never(const std::string&) { return false; }

void Reap(pid_t pid, int* status, absl::Duration grace) {
  const absl::Time end = absl::Now() + grace;
  while (absl::Now() < end) {
    if (waitpid(pid, status, WNOHANG) == pid) return;
    absl::SleepFor(absl::Milliseconds(50));
  }
  kill(pid, SIGTERM);
  const absl::Time end2 = absl::Now() + absl::Seconds(10);
  while (absl::Now() < end2) {
    if (waitpid(pid, status, WNOHANG) == pid) return;
    absl::SleepFor(absl::Milliseconds(50));
  }
  kill(pid, SIGKILL);
  waitpid(pid, status, 0);
}

}  // namespace

std::string RemoteFixturePath() {
  const char* src = std::getenv("TAILOR_SOURCE_DIR");
  return absl::StrCat(src != nullptr ? src : ".",
                      "/tests/storage/remote_fixture.py");
}

absl::StatusOr<FixtureServer> FixtureServer::Start(
    const std::vector<std::string>& args, int deadline_s) {
  absl::StatusOr<Spawned> s = Spawn(args, /*capture_err=*/false);
  if (!s.ok()) return s.status();
  FixtureServer server;
  server.pid_ = s->pid;
  server.stdin_fd_ = s->in;
  std::string line;
  const bool in_time = ReadUntil(
      s->out, &line, absl::Now() + absl::Seconds(deadline_s), HasLine);
  close(s->out);
  const size_t at = line.find("\"port\": ");
  int port = 0;
  if (!in_time || at == std::string::npos ||
      !absl::SimpleAtoi(
          line.substr(at + 8, line.find_first_of(",}", at) - at - 8), &port)) {
    return absl::UnavailableError(absl::StrCat(
        "remote_fixture.py ", absl::StrJoin(args, " "), " did not start (",
        in_time ? "no port" : "timeout", "; its stderr is above): ", line));
  }
  server.port_ = port;
  return server;
}

FixtureServer::FixtureServer(FixtureServer&& o) noexcept
    : pid_(o.pid_), stdin_fd_(o.stdin_fd_), port_(o.port_) {
  o.pid_ = -1;
  o.stdin_fd_ = -1;
}

FixtureServer::~FixtureServer() {
  if (stdin_fd_ >= 0) close(stdin_fd_);
  if (pid_ > 0) {
    int status = 0;
    Reap(pid_, &status, absl::Seconds(15));
  }
}

absl::StatusOr<std::string> RunFixture(const std::vector<std::string>& args,
                                       int* exit_code, int deadline_s) {
  absl::StatusOr<Spawned> s = Spawn(args, /*capture_err=*/true);
  if (!s.ok()) return s.status();
  close(s->in);
  std::string out, err;
  const absl::Time deadline = absl::Now() + absl::Seconds(deadline_s);
  // stdout first, then stderr: the fixture writes little to either.
  const bool in_time = ReadUntil(s->out, &out, deadline, Never);
  ReadUntil(s->err, &err, absl::Now() + absl::Seconds(5), Never);
  close(s->out);
  close(s->err);
  int status = 0;
  Reap(s->pid, &status, in_time ? absl::Seconds(30) : absl::Seconds(0));
  const int code = WIFEXITED(status) ? WEXITSTATUS(status) : 128;
  if (exit_code != nullptr) {
    *exit_code = code;
    return out;
  }
  if (code != 0) {
    return absl::InternalError(
        absl::StrCat("remote_fixture.py ", absl::StrJoin(args, " "), " exited ",
                     code, ": ", err.substr(0, 4000)));
  }
  return out;
}

}  // namespace tailor::testing
