#include "server/shutdown_signals.h"

#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <unistd.h>

#include <cerrno>
#include <thread>

#include "util/errno_status.h"

namespace tailor::server {
namespace {

int g_pipe[2] = {-1, -1};  // [0] read by NextShutdownSignal, [1] written

void Forward(int signal_number) {
  const unsigned char byte = static_cast<unsigned char>(signal_number);
  while (::write(g_pipe[1], &byte, 1) < 0 && errno == EINTR) {
  }
}

// For the threads that do not block the signals; async-signal-safe.
extern "C" void OnShutdownSignal(int signal_number) {
  const int saved = errno;
  Forward(signal_number);
  errno = saved;
}

}  // namespace

absl::Status InstallShutdownSignals() {
  if (::pipe2(g_pipe, O_CLOEXEC) != 0) {
    return ErrnoError(errno, "signals: pipe");
  }
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGTERM);
  sigaddset(&signals, SIGINT);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);
  struct sigaction action = {};
  action.sa_handler = &OnShutdownSignal;
  action.sa_flags = SA_RESTART;
  sigfillset(&action.sa_mask);
  for (int s : {SIGTERM, SIGINT}) {
    if (::sigaction(s, &action, nullptr) != 0) {
      return ErrnoError(errno, "signals: sigaction");
    }
  }
  std::thread([signals] {
    while (true) {
      int signal_number = 0;
      if (sigwait(&signals, &signal_number) == 0) Forward(signal_number);
    }
  }).detach();
  return absl::OkStatus();
}

int NextShutdownSignal() {
  unsigned char byte = 0;
  while (true) {
    const ssize_t n = ::read(g_pipe[0], &byte, 1);
    if (n == 1) return byte;
    if (n < 0 && errno == EINTR) continue;
    return 0;
  }
}

}  // namespace tailor::server
