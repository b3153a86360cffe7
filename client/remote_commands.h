#ifndef TAILOR_CLIENT_REMOTE_COMMANDS_H_
#define TAILOR_CLIENT_REMOTE_COMMANDS_H_

#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "CLI/CLI.hpp"
#include "client/job_output.h"
#include "client/remote_client.h"

namespace tailor::cli {

// The client subcommands of tailord: submit, watch, get, list, cancel,
// delete, fetch, health. Each takes --server HOST:PORT, --timeout SECONDS (the
// deadline of every call) and -o table|json|yaml|job; NAME is "fusionJobs/ID"
// or "ID". Add() registers them; Run() runs the one chosen and returns its exit
// code (nullopt if none was chosen).
class RemoteCommands {
 public:
  void Add(CLI::App& app);
  std::optional<int> Run();

 private:
  int Submit();
  int Watch(const std::string& name, int64_t after);
  int Get();
  int List();
  int Cancel();
  int Delete();
  int Fetch();
  int Health();
  // Prints the job in the chosen format (or fails with its status).
  int PrintJob(const absl::StatusOr<tailor::v1::FusionJob>& job);

  CLI::App *submit_ = nullptr, *watch_ = nullptr, *get_ = nullptr,
           *list_ = nullptr, *cancel_ = nullptr, *delete_ = nullptr,
           *fetch_ = nullptr, *health_ = nullptr;
  std::string server_ = "127.0.0.1:50051";
  // Credentials: a file holding the bearer token (else $TAILOR_TOKEN), TLS.
  std::string token_file_;
  ConnectionOptions connection_;
  double timeout_ = 30;
  double watch_timeout_ = 7 * 24 * 3600;
  // watch, submit --wait: how long to keep reconnecting after the stream
  // was lost (UNAVAILABLE) before giving up; 0: do not reconnect.
  double reconnect_timeout_ = 300;
  std::string output_ = "table";
  bool quiet_ = false;
  // Set by Run() from the flags.
  OutputFormat format_ = OutputFormat::kTable;
  std::unique_ptr<RemoteClient> client_;

  std::string name_;
  // submit
  std::string job_file_, request_id_;
  bool wait_ = false;
  // submit --wait, watch: Ctrl-C cancels the job rather than detaching.
  bool cancel_on_interrupt_ = false;
  int priority_ = 0;
  std::vector<std::string> labels_;
  // watch
  int64_t after_ = 0;
  // list
  int page_size_ = 0;
  std::string page_token_, filter_;
  // fetch
  std::string patch_path_, report_path_;
  // health: "" is the server as a whole
  std::string service_;
};

}  // namespace tailor::cli

#endif  // TAILOR_CLIENT_REMOTE_COMMANDS_H_
