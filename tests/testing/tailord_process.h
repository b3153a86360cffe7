#ifndef TAILOR_TESTS_TESTING_TAILORD_PROCESS_H_
#define TAILOR_TESTS_TESTING_TAILORD_PROCESS_H_

#include <sys/types.h>

#include <string>
#include <vector>

namespace tailor::testing {

// A tailord process on loopback ports chosen by the kernel ($TAILORD, set
// by CTest), with its stderr in a file. Torch-free.
class TailordProcess {
 public:
  // Starts tailord with --listen 127.0.0.1:0 (unless `args` has a
  // --listen) --metrics-listen 127.0.0.1:0 --data-dir `data_dir` plus
  // `args`, and waits until it serves (its ready
  // file appears), it exits, or the start deadline passes: 120 s of wall
  // time ($TAILORD_START_TIMEOUT seconds if set), generous for a loaded
  // machine. ok() says whether it serves; if not, failure() says why and
  // the reason and the server's log are printed to stderr.
  TailordProcess(const std::string& data_dir,
                 const std::vector<std::string>& args,
                 const std::string& scratch_dir);
  // SIGKILLs the process if it still runs.
  ~TailordProcess();
  TailordProcess(const TailordProcess&) = delete;
  TailordProcess& operator=(const TailordProcess&) = delete;

  bool ok() const { return grpc_port_ > 0; }
  // Why the start failed ("" when ok()): the exit status, or the timeout.
  const std::string& failure() const { return failure_; }
  // The exit status if the process exited before serving (else -2), -1
  // if a signal killed it.
  int early_exit() const { return early_exit_; }
  // Seconds from the start to the ready file.
  double start_seconds() const { return start_seconds_; }
  std::string address() const;  // 127.0.0.1:<grpc port>
  int grpc_port() const { return grpc_port_; }
  int metrics_port() const { return metrics_port_; }
  pid_t pid() const { return pid_; }

  // Sends `signal` and waits for the exit; returns the exit status (-1 if
  // killed by a signal).
  int Stop(int signal);
  // Sends `signal` without waiting (false if the process is gone).
  bool Signal(int signal);
  // Waits for the exit; its status as Stop's.
  int Wait();
  // Everything tailord wrote to stderr so far.
  std::string Log() const;

 private:
  pid_t pid_ = -1;
  int grpc_port_ = 0, metrics_port_ = 0;
  int early_exit_ = -2;
  double start_seconds_ = 0;
  std::string failure_;
  std::string log_path_;
};

// A plain HTTP/1.0 GET on 127.0.0.1:`port`; returns the status code and
// the body (status -1 on a connection error).
struct HttpResponse {
  int status = -1;
  std::string body;
};
HttpResponse HttpGet(int port, const std::string& path);

// Runs `command` with `input` on stdin (through sh); returns the exit status
// and stdout+stderr.
struct CommandResult {
  int code = -1;
  std::string output;
};
CommandResult RunWithInput(const std::string& command, const std::string& input,
                           const std::string& scratch_dir);

}  // namespace tailor::testing

#endif  // TAILOR_TESTS_TESTING_TAILORD_PROCESS_H_
