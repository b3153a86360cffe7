#include "client/remote_commands.h"

#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdlib>
#include <iostream>
#include <thread>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "api/spec_convert.h"
#include "client/exit_codes.h"
#include "client/job_file.h"
#include "client/job_output.h"
#include "client/progress_bar.h"
#include "client/remote_client.h"
#include "storage/uri_resolver.h"
#include "util/file_util.h"

namespace tailor::cli {
namespace {

namespace v1 = ::tailor::v1;

// Set by SIGINT/SIGTERM while a watch runs (RemoteCommands::Watch).
std::atomic<bool> g_interrupted{false};
extern "C" void OnWatchInterrupt(int) { g_interrupted.store(true); }

// "fusionJobs/ID" as given, or a bare "ID" with the collection prefixed.
std::string JobName(const std::string& name) {
  if (name.empty() || name.find('/') != std::string::npos) return name;
  return absl::StrCat("fusionJobs/", name);
}

// Relative paths of a job file are resolved against the job file's
// directory when it is read (LoadJobFile); what is still relative here is
// made absolute against the working directory, so the server sees only
// absolute paths.
void AbsolutizePaths(nlohmann::json* spec) {
  char cwd[4096];
  if (::getcwd(cwd, sizeof(cwd)) == nullptr) return;
  auto fix = [&](nlohmann::json& obj, const char* key) {
    auto it = obj.find(key);
    if (it == obj.end() || !it->is_string()) return;
    const std::string uri = it->get<std::string>();
    if (uri.empty() || uri[0] == '/' || !UriScheme(uri).empty()) return;
    *it = absl::StrCat(cwd, "/", uri);
  };
  for (const char* key : {"pretrained", "out", "patch_out", "report"}) {
    fix(*spec, key);
  }
  if (spec->contains("tasks")) {
    for (nlohmann::json& task : (*spec)["tasks"]) {
      for (const char* key : {"finetuned", "patch", "hessians"}) {
        fix(task, key);
      }
    }
  }
}

// The exit code a finished job's state stands for.
int ExitCodeForState(v1::State state) {
  switch (state) {
    case v1::SUCCEEDED:
      return kExitOk;
    case v1::CANCELLED:
      return kExitCancelled;
    default:
      return kExitJobFailed;
  }
}

}  // namespace

void RemoteCommands::Add(CLI::App& app) {
  auto common = [&](CLI::App* c) {
    c->add_option("--server", server_, "tailord address HOST:PORT")
        ->envname("TAILOR_SERVER")
        ->capture_default_str();
    c->add_option("--token-file", token_file_,
                  "file holding the bearer token sent as 'authorization: "
                  "Bearer <token>' (default: the token in $TAILOR_TOKEN, if "
                  "set)")
        ->envname("TAILOR_TOKEN_FILE");
    c->add_option("--tls-ca", connection_.tls_ca,
                  "PEM CA bundle to verify tailord's certificate with: "
                  "connect with TLS")
        ->envname("TAILOR_TLS_CA");
    c->add_option("--tls-cert", connection_.tls_cert,
                  "PEM client certificate for mTLS (with --tls-key); "
                  "connects with TLS, verified by the system's roots unless "
                  "--tls-ca")
        ->envname("TAILOR_TLS_CERT");
    c->add_option("--tls-key", connection_.tls_key,
                  "PEM private key of --tls-cert")
        ->envname("TAILOR_TLS_KEY");
    c->add_option("--tls-server-name", connection_.tls_server_name,
                  "name tailord's certificate must carry (default: the host "
                  "of --server); connects with TLS");
    c->add_option("--timeout", timeout_,
                  "deadline of each call in seconds (watches: --watch-timeout)")
        ->capture_default_str();
    c->add_option("-o,--output", output_,
                  "output format: table|json|yaml, or job (a job file of the "
                  "spec, for get/submit/cancel)")
        ->check(CLI::IsMember({"table", "json", "yaml", "job"}))
        ->capture_default_str();
  };
  // A command about one job: the common options and its name.
  auto job_command = [&](const char* command, const std::string& help) {
    CLI::App* c = app.add_subcommand(command, help);
    common(c);
    c->add_option("name", name_, "fusionJobs/<id> or <id>")->required();
    return c;
  };
  submit_ = app.add_subcommand(
      "submit",
      "Submit a fusion job to tailord (the job file of `fuse -f`; relative "
      "paths in it are relative to the job file's directory and sent "
      "absolute). Prints the job.");
  common(submit_);
  submit_->add_option("-f,--job-file", job_file_, "YAML job file")
      ->required()
      ->check(CLI::ExistingFile);
  submit_->add_flag("--wait", wait_,
                    "watch the job to its end; exit with its outcome (Ctrl-C "
                    "detaches, exit 8: the job continues)");
  submit_->add_flag("--cancel-on-interrupt", cancel_on_interrupt_,
                    "with --wait: Ctrl-C cancels the job (exit 130) instead "
                    "of detaching");
  submit_->add_option("--priority", priority_,
                      "0 (default) to 9; higher first");
  submit_->add_option("--label", labels_,
                      "job label KEY=VALUE (repeatable; [a-z0-9_-])");
  submit_->add_option(
      "--request-id", request_id_,
      "idempotency key (<= 36 chars): resubmitting with the same id and job "
      "returns the same job");
  submit_->add_option("--watch-timeout", watch_timeout_,
                      "deadline of --wait in seconds");
  submit_
      ->add_option("--reconnect-timeout", reconnect_timeout_,
                   "with --wait: seconds to keep reconnecting when the "
                   "stream is lost (server restarted, proxy cut it), "
                   "resuming after the last event; then exit 7 (0: do not "
                   "reconnect)")
      ->capture_default_str();
  submit_->add_flag("-q,--quiet", quiet_,
                    "no progress bar nor \"watching\" line");

  watch_ = job_command(
      "watch",
      "Stream a job's events (history, then live) until it ends; exit with "
      "its outcome. A progress bar goes to stderr on a terminal. Ctrl-C "
      "detaches (exit 8; the job continues, resume with --after N). A lost "
      "stream (UNAVAILABLE: tailord restarted, a proxy cut it) is resumed "
      "by itself after the last event received, for up to "
      "--reconnect-timeout seconds.");
  watch_->add_flag("--cancel-on-interrupt", cancel_on_interrupt_,
                   "Ctrl-C cancels the job (exit 130) instead of detaching");
  watch_->add_option("--after", after_,
                     "resume after this event sequence number");
  watch_->add_option("--watch-timeout", watch_timeout_,
                     "deadline of the watch in seconds");
  watch_
      ->add_option("--reconnect-timeout", reconnect_timeout_,
                   "seconds to keep reconnecting when the stream is lost, "
                   "resuming after the last event; then exit 7 (0: do not "
                   "reconnect)")
      ->capture_default_str();
  watch_->add_flag("-q,--quiet", quiet_,
                   "no progress bar nor \"watching\" line");

  get_ = job_command(
      "get",
      "Show one job: its details and spec (-o table), the job resource "
      "(-o json|yaml), or its spec as a job file to submit again (-o job).");

  list_ = app.add_subcommand("list", "List jobs, newest first.");
  common(list_);
  list_->add_option("--page-size", page_size_, "jobs per page (default 50)");
  list_->add_option("--page-token", page_token_, "from a previous page");
  list_->add_option("--filter", filter_,
                    "e.g. 'state=RUNNING AND labels.team=vision'");

  cancel_ = job_command(
      "cancel", "Cancel a queued or running job; nothing is published.");

  delete_ = job_command(
      "delete",
      "Delete a finished job (SUCCEEDED, FAILED or CANCELLED): its record, "
      "events and journal on the server. Its outputs (fused checkpoint, "
      "patch, report) are left in place. A queued or running job is refused "
      "(exit 3): cancel it first.");

  fetch_ = job_command(
      "fetch",
      "Download a succeeded job's stitched patch and/or JSON report (checked "
      "against the server's SHA-256).");
  fetch_->add_option("--patch", patch_path_, "where to write the patch");
  fetch_->add_option("--report", report_path_, "where to write the report");

  health_ = app.add_subcommand(
      "health",
      "Ask tailord's grpc.health.v1 service whether it serves (needs no "
      "token; TLS options as for the other commands). Prints the status; "
      "exit 0 when SERVING, 7 when NOT_SERVING (draining, or its data "
      "directory cannot be written) or unreachable, 4 for an unknown "
      "--service. For container HEALTHCHECKs "
      "and exec probes.");
  common(health_);
  health_->add_option("--service", service_,
                      "the service to ask about (default: the server as a "
                      "whole; tailor.v1.FusionService also answers)");
}

std::optional<int> RemoteCommands::Run() {
  const bool chosen = (submit_ && *submit_) || (watch_ && *watch_) ||
                      (get_ && *get_) || (list_ && *list_) ||
                      (cancel_ && *cancel_) || (delete_ && *delete_) ||
                      (fetch_ && *fetch_) || (health_ && *health_);
  if (!chosen) return std::nullopt;
  absl::StatusOr<OutputFormat> format = ParseOutputFormat(output_);
  if (!format.ok()) return ReportFailure(format.status());
  format_ = *format;
  name_ = JobName(name_);
  if (format_ == OutputFormat::kJob &&
      ((list_ && *list_) || (watch_ && *watch_) || (fetch_ && *fetch_) ||
       (delete_ && *delete_) || (health_ && *health_))) {
    std::cerr << "tailorctl: error: -o job is for get, submit and cancel\n";
    return kExitUsage;
  }
  if (!token_file_.empty()) {
    absl::StatusOr<std::string> token = ReadFileToString(token_file_, 4096);
    if (!token.ok()) {
      return ReportFailure(absl::Status(
          token.status().code(),
          absl::StrCat("--token-file: ", token.status().message())));
    }
    connection_.token = std::string(absl::StripAsciiWhitespace(*token));
    if (connection_.token.empty()) {
      return ReportFailure(absl::InvalidArgumentError(
          absl::StrCat("--token-file: ", token_file_, " is empty")));
    }
  } else if (const char* env = std::getenv("TAILOR_TOKEN")) {
    connection_.token = std::string(absl::StripAsciiWhitespace(env));
  }
  absl::StatusOr<Connection> connection = Connect(connection_);
  if (!connection.ok()) return ReportFailure(connection.status());
  client_ = std::make_unique<RemoteClient>(server_, absl::Seconds(timeout_),
                                           absl::Seconds(watch_timeout_),
                                           std::move(*connection));
  if (submit_ != nullptr && *submit_) return Submit();
  if (watch_ != nullptr && *watch_) return Watch(name_, after_);
  if (get_ != nullptr && *get_) return Get();
  if (list_ != nullptr && *list_) return List();
  if (cancel_ != nullptr && *cancel_) return Cancel();
  if (delete_ != nullptr && *delete_) return Delete();
  if (fetch_ != nullptr && *fetch_) return Fetch();
  if (health_ != nullptr && *health_) return Health();
  return std::nullopt;
}

int RemoteCommands::Submit() {
  absl::StatusOr<nlohmann::json> json = LoadJobFileJson(job_file_);
  if (!json.ok()) return ReportFailure(json.status());
  AbsolutizePaths(&*json);
  absl::StatusOr<v1::FusionJobSpec> proto = api::SpecFromJson(*json);
  if (!proto.ok()) return ReportFailure(proto.status());
  v1::CreateFusionJobRequest request;
  *request.mutable_spec() = *proto;
  request.set_priority(priority_);
  request.set_request_id(request_id_);
  for (const std::string& label : labels_) {
    const size_t eq = label.find('=');
    if (eq == std::string::npos) {
      return ReportFailure(absl::InvalidArgumentError(
          absl::StrCat("--label: expected KEY=VALUE, not '", label, "'")));
    }
    (*request.mutable_labels())[label.substr(0, eq)] = label.substr(eq + 1);
  }
  absl::StatusOr<v1::FusionJob> job = client_->Create(request);
  if (!job.ok() || !wait_) return PrintJob(job);
  std::cerr << "submitted " << job->name() << "\n";
  return Watch(job->name(), 0);
}

int RemoteCommands::Watch(const std::string& name, int64_t after) {
  TerminalProgress bar(quiet_);
  int64_t last = after;
  // Ctrl-C (or SIGTERM) stops this client watching; the job is the
  // server's and goes on unless --cancel-on-interrupt (issue #17 point 4).
  g_interrupted.store(false);
  struct sigaction action = {}, old_int = {}, old_term = {};
  action.sa_handler = OnWatchInterrupt;
  sigemptyset(&action.sa_mask);
  ::sigaction(SIGINT, &action, &old_int);
  ::sigaction(SIGTERM, &action, &old_term);
  if (!quiet_) {
    std::cerr << "tailorctl: watching " << name
              << (cancel_on_interrupt_
                      ? "; Ctrl-C cancels the job\n"
                      : "; Ctrl-C detaches (the job continues)\n");
  }
  // A lost stream (UNAVAILABLE: the server restarted or drained, a proxy
  // cut the connection) is resumed after the last event received, so the
  // events printed stay gap-free and without repeats (issue #17 point 8).
  // `lost_since` is when the stream was lost and no event has come since;
  // past --reconnect-timeout from then the watch gives up.
  std::optional<absl::Time> lost_since;
  absl::Duration backoff = absl::Milliseconds(250);
  absl::Status s;
  while (true) {
    bool got_event = false;
    const absl::Time attempt = absl::Now();
    s = client_->Watch(
        name, last,
        [&](const v1::JobEvent& e) {
          if (e.sequence() <= last) return;  // never printed twice
          if (lost_since.has_value()) {
            bar.Clear();
            std::cerr << "tailorctl: reconnected; resumed " << name
                      << " after event " << last << "\n";
            lost_since.reset();
          }
          got_event = true;
          last = e.sequence();
          bar.Clear();
          std::cout << FormatEvent(e, format_) << std::flush;
          if (e.has_progress()) bar.OnEvent(ToProgressEvent(e));
        },
        &g_interrupted);
    if (g_interrupted.load() || s.code() != absl::StatusCode::kUnavailable ||
        reconnect_timeout_ <= 0) {
      break;
    }
    const absl::Time now = absl::Now();
    if (got_event || now - attempt >= absl::Seconds(30)) {
      // The stream was up (it delivered events, or stayed open longer than
      // a connection attempt can take): this is a new loss.
      backoff = absl::Milliseconds(250);
      lost_since.reset();
    }
    if (!lost_since.has_value()) {
      lost_since = now;
      bar.Clear();
      std::cerr << "tailorctl: lost the watch of " << name << " ("
                << s.message().substr(0, 200) << "); reconnecting for up to "
                << reconnect_timeout_ << " s, resuming after event " << last
                << "\n";
    }
    const absl::Time give_up = *lost_since + absl::Seconds(reconnect_timeout_);
    if (now >= give_up) {
      std::cerr << "tailorctl: gave up reconnecting after "
                << reconnect_timeout_ << " s (--reconnect-timeout)\n";
      break;
    }
    // Bounded backoff (250 ms doubling to 5 s), cut short by Ctrl-C.
    const absl::Time wake = std::min(now + backoff, give_up);
    while (absl::Now() < wake && !g_interrupted.load()) {
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
    if (g_interrupted.load()) break;
    backoff = std::min(backoff * 2, absl::Seconds(5));
  }
  ::sigaction(SIGINT, &old_int, nullptr);
  ::sigaction(SIGTERM, &old_term, nullptr);
  bar.Clear();
  if (g_interrupted.load()) {
    if (!cancel_on_interrupt_) {
      std::cerr << "tailorctl: detached; the job continues: tailorctl watch "
                << name << " --after " << last << "\n";
      return kExitDetached;
    }
    absl::StatusOr<v1::FusionJob> cancelled = client_->Cancel(name);
    if (!cancelled.ok()) return ReportFailure(cancelled.status());
    std::cerr << "tailorctl: interrupted; cancelled " << name
              << " (a cancelled job publishes nothing)\n";
    return kExitCancelled;
  }
  if (!s.ok()) {
    if (s.code() == absl::StatusCode::kUnavailable) {
      std::cerr << "tailorctl: resume with: tailorctl watch " << name
                << " --after " << last << "\n";
    }
    return ReportFailure(s);
  }
  absl::StatusOr<v1::FusionJob> job = client_->Get(name);
  if (!job.ok()) return ReportFailure(job.status());
  if (job->state() != v1::SUCCEEDED) {
    std::cerr << "tailorctl: " << name << " " << v1::State_Name(job->state())
              << (job->error_message().empty() ? "" : ": ")
              << job->error_message() << "\n";
  }
  return ExitCodeForState(job->state());
}

int RemoteCommands::PrintJob(const absl::StatusOr<v1::FusionJob>& job) {
  if (!job.ok()) return ReportFailure(job.status());
  if (format_ == OutputFormat::kJob) {
    std::cout << FormatJobFile(job->spec());
  } else {
    std::cout << FormatJobs({*job}, format_, /*single=*/true);
  }
  return kExitOk;
}

int RemoteCommands::Get() {
  absl::StatusOr<v1::FusionJob> job = client_->Get(name_);
  if (job.ok() && format_ == OutputFormat::kTable) {
    std::cout << FormatJobDetail(*job);
    return kExitOk;
  }
  return PrintJob(job);
}

int RemoteCommands::List() {
  v1::ListFusionJobsRequest request;
  request.set_page_size(page_size_);
  request.set_page_token(page_token_);
  request.set_filter(filter_);
  absl::StatusOr<v1::ListFusionJobsResponse> list = client_->List(request);
  if (!list.ok()) return ReportFailure(list.status());
  std::vector<v1::FusionJob> jobs(list->fusion_jobs().begin(),
                                  list->fusion_jobs().end());
  std::cout << FormatJobs(jobs, format_, /*single=*/false,
                          list->next_page_token());
  return kExitOk;
}

int RemoteCommands::Cancel() { return PrintJob(client_->Cancel(name_)); }

int RemoteCommands::Delete() {
  absl::Status s = client_->Delete(name_);
  if (!s.ok()) return ReportFailure(s);
  if (format_ == OutputFormat::kTable) {
    std::cout << "deleted " << name_ << "\n";
  } else {
    // The response, google.protobuf.Empty: "{}" in JSON and in YAML.
    std::cout << "{}\n";
  }
  return kExitOk;
}

int RemoteCommands::Fetch() {
  if (patch_path_.empty() && report_path_.empty()) {
    std::cerr << "tailorctl: error: fetch needs --patch PATH and/or --report "
                 "PATH\n";
    return kExitUsage;
  }
  for (const auto& [path, kind] :
       {std::make_pair(patch_path_, v1::ReadJobResultRequest::PATCH),
        std::make_pair(report_path_, v1::ReadJobResultRequest::REPORT)}) {
    if (path.empty()) continue;
    absl::StatusOr<std::string> sha = client_->Fetch(name_, kind, path);
    if (!sha.ok()) return ReportFailure(sha.status());
    std::cout << path << " sha256:" << *sha << "\n";
  }
  return kExitOk;
}

int RemoteCommands::Health() {
  absl::StatusOr<RemoteClient::HealthStatus> status = client_->Health(service_);
  if (!status.ok()) return ReportFailure(status.status());
  static constexpr const char* kNames[] = {"UNKNOWN", "SERVING", "NOT_SERVING",
                                           "SERVICE_UNKNOWN"};
  const char* name = kNames[*status];
  if (format_ == OutputFormat::kJson) {
    std::cout << "{\"status\": \"" << name << "\"}\n";
  } else if (format_ == OutputFormat::kYaml) {
    std::cout << "status: " << name << "\n";
  } else {
    std::cout << name << "\n";
  }
  if (*status == RemoteClient::kServing) return kExitOk;
  if (*status == RemoteClient::kServiceUnknown) return kExitNotFound;
  return kExitUnavailable;
}

}  // namespace tailor::cli
