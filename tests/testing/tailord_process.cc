#include "testing/tailord_process.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <fstream>
#include <iostream>
#include <sstream>
#include <stdexcept>
#include <thread>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "nlohmann/json.hpp"
#include "util/file_util.h"

namespace tailor::testing {
namespace {

std::string Slurp(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

}  // namespace

TailordProcess::TailordProcess(const std::string& data_dir,
                               const std::vector<std::string>& args,
                               const std::string& scratch_dir) {
  const char* bin = std::getenv("TAILORD");
  if (bin == nullptr) {
    throw std::runtime_error("TAILORD is not set (run the test through ctest)");
  }
  static int counter = 0;
  const std::string tag = absl::StrCat(::getpid(), "-", ++counter);
  const std::string ready = JoinPath(scratch_dir, "ready-" + tag + ".json");
  log_path_ = JoinPath(scratch_dir, "tailord-" + tag + ".log");
  std::vector<std::string> argv = {bin};
  // A --listen in `args` (a restart on the same port) replaces the default.
  if (std::find(args.begin(), args.end(), "--listen") == args.end()) {
    argv.insert(argv.end(), {"--listen", "127.0.0.1:0"});
  }
  argv.insert(argv.end(), {"--metrics-listen", "127.0.0.1:0", "--data-dir",
                           data_dir, "--ready-file", ready});
  argv.insert(argv.end(), args.begin(), args.end());
  pid_ = ::fork();
  if (pid_ == 0) {
    const int fd =
        ::open(log_path_.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0644);
    ::dup2(fd, 2);
    std::vector<char*> cargv;
    for (std::string& a : argv) cargv.push_back(a.data());
    cargv.push_back(nullptr);
    ::execv(cargv[0], cargv.data());
    ::_exit(127);
  }
  double limit = 120;
  if (const char* t = std::getenv("TAILORD_START_TIMEOUT")) {
    if (!absl::SimpleAtod(t, &limit) || limit <= 0) limit = 120;
  }
  const auto t0 = std::chrono::steady_clock::now();
  const auto deadline = t0 + std::chrono::duration<double>(limit);
  auto elapsed = [&] {
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0)
        .count();
  };
  while (true) {
    if (PathExists(ready)) {
      nlohmann::json j = nlohmann::json::parse(Slurp(ready), nullptr, false);
      if (j.is_object()) {
        grpc_port_ = j.value("grpc_port", 0);
        metrics_port_ = j.value("metrics_port", 0);
        start_seconds_ = elapsed();
        if (grpc_port_ > 0) {
          std::cerr << "TailordProcess: serving after " << start_seconds_
                    << " s\n";
          return;
        }
        failure_ = "its ready file has no grpc_port";
        break;
      }
    }
    int status;
    if (::waitpid(pid_, &status, WNOHANG) == pid_) {
      pid_ = -1;
      early_exit_ = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
      failure_ =
          WIFEXITED(status)
              ? absl::StrCat("it exited with status ", WEXITSTATUS(status),
                             " after ", elapsed(), " s, before serving")
              : absl::StrCat("signal ", WTERMSIG(status), " killed it after ",
                             elapsed(), " s, before it served");
      break;
    }
    if (std::chrono::steady_clock::now() > deadline) {
      failure_ = absl::StrCat("it did not serve within ", limit,
                              " s (no ready file ", ready, ")");
      break;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  std::cerr << "TailordProcess: tailord (data dir " << data_dir
            << ") did not start: " << failure_ << "\n--- its log (" << log_path_
            << ") ---\n"
            << Log() << "--- end of log ---\n";
}

TailordProcess::~TailordProcess() {
  if (pid_ > 0) Stop(SIGKILL);
}

std::string TailordProcess::address() const {
  return absl::StrCat("127.0.0.1:", grpc_port_);
}

int TailordProcess::Stop(int signal) {
  Signal(signal);
  return Wait();
}

bool TailordProcess::Signal(int signal) {
  return pid_ > 0 && ::kill(pid_, signal) == 0;
}

int TailordProcess::Wait() {
  if (pid_ <= 0) return -1;
  int status = 0;
  ::waitpid(pid_, &status, 0);
  pid_ = -1;
  return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

std::string TailordProcess::Log() const { return Slurp(log_path_); }

HttpResponse HttpGet(int port, const std::string& path) {
  HttpResponse r;
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0) return r;
  ScopedFd sock(fd);
  // A server that never answers fails the request instead of hanging it.
  timeval timeout{30, 0};
  ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, sizeof(timeout));
  ::setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &timeout, sizeof(timeout));
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<uint16_t>(port));
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
    return r;
  }
  const std::string request =
      absl::StrCat("GET ", path, " HTTP/1.0\r\nHost: localhost\r\n\r\n");
  if (::write(fd, request.data(), request.size()) !=
      static_cast<ssize_t>(request.size())) {
    return r;
  }
  std::string response;
  char buf[65536];
  ssize_t n;
  while ((n = ::read(fd, buf, sizeof(buf))) > 0) response.append(buf, n);
  const size_t split = response.find("\r\n\r\n");
  if (response.compare(0, 9, "HTTP/1.1 ") != 0 &&
      response.compare(0, 9, "HTTP/1.0 ") != 0) {
    return r;
  }
  if (!absl::SimpleAtoi(response.substr(9, 3), &r.status)) r.status = -1;
  if (split != std::string::npos) r.body = response.substr(split + 4);
  return r;
}

CommandResult RunWithInput(const std::string& command, const std::string& input,
                           const std::string& scratch_dir) {
  static int counter = 0;
  const std::string tag = absl::StrCat(::getpid(), "-", ++counter);
  const std::string in = JoinPath(scratch_dir, "stdin-" + tag);
  const std::string out = JoinPath(scratch_dir, "stdout-" + tag);
  {
    std::ofstream f(in, std::ios::binary);
    f << input;
  }
  const std::string cmd =
      absl::StrCat(command, " <'", in, "' >'", out, "' 2>&1");
  const int status = std::system(cmd.c_str());
  return {WIFEXITED(status) ? WEXITSTATUS(status) : -1, Slurp(out)};
}

}  // namespace tailor::testing
