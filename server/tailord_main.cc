// tailord: the tailor gRPC service. See `tailord --help` and README.md.
//
// Life cycle: start the job manager (requeuing unfinished jobs), the gRPC
// server (FusionService behind the authenticator, plaintext or TLS/mTLS;
// grpc.health.v1 and reflection without credentials) and the metrics
// endpoint (health SERVING and /readyz 200, except while the data
// directory cannot be written: server/serving_state.h); then wait for
// SIGTERM/SIGINT and drain: health NOT_SERVING and
// /readyz 503, creates UNAVAILABLE, running jobs stop and go back to QUEUED,
// watchers get their remaining events and a final UNAVAILABLE (result
// streams an UNAVAILABLE after their chunk in flight), and the process exits
// within --drain-timeout. A second SIGTERM/SIGINT during the drain exits at
// once with kExitSecondSignal (ExitOnSecondSignal).

#include <grpcpp/ext/proto_server_reflection_plugin.h>
#include <grpcpp/grpcpp.h>
#include <grpcpp/health_check_service_interface.h>
#include <grpcpp/impl/server_builder_option.h>
#include <grpcpp/impl/server_builder_plugin.h>
#include <grpcpp/security/server_credentials.h>
#include <grpcpp/security/tls_certificate_provider.h>
#include <grpcpp/security/tls_credentials_options.h>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <iostream>
#include <thread>

#include "CLI/CLI.hpp"
#include "absl/base/thread_annotations.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "google/protobuf/stubs/logging.h"
#include "jobs/fusion_job_runner.h"
#include "jobs/job_manager.h"
#include "metrics/data_dir_metrics.h"
#include "metrics/process_metrics.h"
#include "metrics/registry.h"
#include "metrics/remote_metrics.h"
#include "nlohmann/json.hpp"
#include "server/auth/authenticator.h"
#include "server/auth/tls_files.h"
#include "server/auth/token_file.h"
#include "server/build_info.h"
#include "server/fusion_service.h"
#include "server/grpc_server_metrics.h"
#include "server/metrics_http_server.h"
#include "server/reflection_v1.h"
#include "server/server_config.h"
#include "server/serving_state.h"
#include "server/shutdown_signals.h"
#include "storage/object_store_factory.h"
#include "util/cpu_tuning.h"
#include "util/file_util.h"
#include "util/log.h"
#include "util/memory.h"
#include "util/upload_record.h"

namespace tailor::server {
namespace {

constexpr char kServiceName[] = "tailor.v1.FusionService";
// How often the data directory is probed for writability (readiness).
constexpr absl::Duration kDataDirProbeInterval = absl::Seconds(5);

// tailord's exit status after a second SIGTERM/SIGINT cut its drain short.
constexpr int kExitSecondSignal = 3;

int Fail(const absl::Status& status) {
  Log(LogLevel::kError, "", std::string(status.message()));
  return 1;
}

// libprotobuf's own log lines (e.g. a message it cannot parse) go through
// the logfmt logger like every other line, bounded in length.
void ProtobufLogHandler(google::protobuf::LogLevel level, const char* file,
                        int line, const std::string& message) {
  LogLevel ours = LogLevel::kError;
  if (level == google::protobuf::LOGLEVEL_INFO) ours = LogLevel::kInfo;
  if (level == google::protobuf::LOGLEVEL_WARNING) ours = LogLevel::kWarning;
  Log(ours, "",
      absl::StrCat(
          "libprotobuf ", file, ":", line, ": ",
          message.size() > 1000 ? message.substr(0, 1000) + "..." : message));
}

LogLevel ParseLevel(const std::string& level) {
  if (level == "debug") return LogLevel::kDebug;
  if (level == "warning") return LogLevel::kWarning;
  if (level == "error") return LogLevel::kError;
  return LogLevel::kInfo;
}

// The gRPC port's credentials: plaintext, or TLS from files that gRPC's
// FileWatcherCertificateProvider re-reads every `reload` (a renewed
// certificate serves new handshakes; open connections and running jobs are
// untouched), with client certificates required and verified against
// tls_client_ca when given.
absl::StatusOr<std::shared_ptr<grpc::ServerCredentials>> GrpcCredentials(
    const ServerConfig& config) {
  if (config.tls_cert.empty()) return grpc::InsecureServerCredentials();
  absl::Status s = auth::CheckTlsFiles(config.tls_cert, config.tls_key,
                                       config.tls_client_ca);
  if (!s.ok()) return s;
  const unsigned int reload =
      static_cast<unsigned int>(std::max(1.0, config.auth_reload_seconds));
  auto provider =
      std::make_shared<grpc::experimental::FileWatcherCertificateProvider>(
          config.tls_key, config.tls_cert, config.tls_client_ca, reload);
  grpc::experimental::TlsServerCredentialsOptions options(provider);
  options.watch_identity_key_cert_pairs();
  if (config.tls_client_ca.empty()) {
    options.set_cert_request_type(GRPC_SSL_DONT_REQUEST_CLIENT_CERTIFICATE);
  } else {
    options.watch_root_certs();
    options.set_cert_request_type(
        GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY);
  }
  return grpc::experimental::TlsServerCredentials(options);
}

// Drops gRPC's server reflection plugin, which linking grpc++_reflection
// registers for every server (a static initializer): --reflection=false.
class WithoutReflection final : public grpc::ServerBuilderOption {
 public:
  void UpdateArguments(grpc::ChannelArguments*) override {}
  void UpdatePlugins(std::vector<std::unique_ptr<grpc::ServerBuilderPlugin>>*
                         plugins) override {
    plugins->erase(
        std::remove_if(plugins->begin(), plugins->end(),
                       [](const std::unique_ptr<grpc::ServerBuilderPlugin>& p) {
                         return p->name() == "proto_server_reflection";
                       }),
        plugins->end());
  }
};

// The second signal of a drain. Leaked on purpose: the thread waiting for
// that signal may outlive Serve().
struct SecondSignal {
  absl::Mutex mu;
  bool drained ABSL_GUARDED_BY(mu) = false;  // Serve() is past the drain
};

// Run on its own thread once the drain began: a second SIGTERM or SIGINT
// logs "second signal: ...", waits for the job store's transaction in
// progress and exits with kExitSecondSignal without waiting for running
// jobs: they stay RUNNING in the store and resume from their journals at
// the next start, as after SIGKILL. Does nothing once the drain is over.
void ExitOnSecondSignal(SecondSignal* state, jobs::JobManager* manager) {
  const int signal_number = NextShutdownSignal();
  absl::MutexLock lock(&state->mu);  // held until the exit
  if (state->drained) return;
  Log(LogLevel::kWarning, "",
      absl::StrCat("second signal: exiting without waiting for running jobs "
                   "(signal ",
                   signal_number,
                   "); they resume from their journals at the next start"));
  manager->FreezeStore();
  std::_Exit(kExitSecondSignal);
}

int Serve(const ServerConfig& config) {
  SetMinLogLevel(ParseLevel(config.log_level));
  google::protobuf::SetLogHandler(&ProtobufLogHandler);
  // One compute pool for the process, sized once (--threads, default the
  // cgroup's CPU quota) and split into --cpu-workers slots; a job's
  // `threads` field does not resize it. The allocator policy, too, is the
  // binary's choice, never a job's.
  const ComputeThreads threads =
      ConfigureComputeThreads(config.threads, config.cpu_workers);
  ConfigureAllocatorForStreaming();
  Log(LogLevel::kInfo, "",
      absl::StrCat("compute threads: ", threads.workers, " workers of ",
                   threads.blas, " BLAS, ", threads.aten,
                   " LibTorch intra-op"));
  std::vector<std::string> roots = config.allowed_roots;
  if (roots.empty()) {
    char cwd[4096];
    if (::getcwd(cwd, sizeof(cwd)) == nullptr) {
      return Fail(ErrnoError(errno, "getcwd"));
    }
    roots.push_back(cwd);
  }
  // No job output may touch the data directory (the job store, journals),
  // even when it lies inside an allowed root (the defaults: root = cwd,
  // data = ./tailord-data).
  // Remote storage (issue #16): remote outputs are staged under the data
  // directory (which no output may touch).
  RemoteStorageFlags remote_flags;
  remote_flags.ca_file = config.ca_file;
  remote_flags.cache_dir = config.cache_dir;
  remote_flags.cache_bytes = config.cache_bytes;
  remote_flags.scratch_dir = JoinPath(config.data_dir, "remote-staging");
  absl::StatusOr<UriResolver::Remote> remote = MakeRemoteAccess(remote_flags);
  if (!remote.ok()) return Fail(remote.status());
  {
    // A tailord killed while uploading left its remote staging and the
    // multipart uploads it had begun (issue #16 point 3): aborted and
    // removed before any job runs (a requeued job publishes anew).
    const RemoteScratchCleanup cleaned =
        CleanRemoteScratch(remote_flags.scratch_dir, remote->provider.get());
    if (cleaned.records > 0 || cleaned.staging_removed > 0) {
      Log(LogLevel::kInfo, "",
          absl::StrCat("remote staging of a stopped run: ", cleaned.aborted,
                       " upload(s) aborted, ", cleaned.abort_failures, " not, ",
                       cleaned.staging_removed, " staging entr",
                       cleaned.staging_removed == 1 ? "y" : "ies", " removed"));
    }
  }
  absl::StatusOr<std::unique_ptr<jobs::JobRunner>> runner =
      jobs::NewFusionJobRunner(roots, {config.data_dir}, *std::move(remote));
  if (!runner.ok()) {
    return Fail(absl::InvalidArgumentError(
        absl::StrCat("allowed-root: ", runner.status().message())));
  }
  metrics::Registry registry;
  registry
      .AddGauge("tailor_build_info",
                "A constant 1, labelled with the version and the source "
                "revision of the running tailord.",
                {"version", "revision"})
      ->Set({kBuildVersion, kBuildRevision}, 1);
  metrics::AddProcessMetrics(&registry);
  metrics::AddRemoteMetrics(&registry);
  {
    metrics::DataDirMetricsOptions disk;
    disk.data_dir = config.data_dir;
    disk.journal_dir = JoinPath(config.data_dir, jobs::kJournalDirName);
    disk.journal_reserve_bytes =
        static_cast<uint64_t>(config.journal_reserve_bytes);
    metrics::AddDataDirMetrics(&registry, std::move(disk));
  }
  jobs::JobManagerOptions options;
  options.data_dir = config.data_dir;
  options.max_concurrent_jobs = config.max_concurrent_jobs;
  options.workers = threads.workers;
  options.max_queued_jobs = config.max_queued_jobs;
  options.max_queued_jobs_per_principal = config.max_queued_jobs_per_principal;
  options.max_spec_bytes = static_cast<size_t>(config.max_spec_bytes);
  options.device_budgets = *config.DeviceBudgets();  // validated
  options.journal_max_bytes = static_cast<uint64_t>(config.journal_max_bytes);
  options.journal_reserve_bytes =
      static_cast<uint64_t>(config.journal_reserve_bytes);
  options.max_interrupted_runs = config.max_interrupted_runs;
  options.job_retention = *config.JobRetention();  // validated
  absl::StatusOr<std::unique_ptr<jobs::JobManager>> manager =
      jobs::JobManager::Create(options, std::move(*runner), &registry);
  if (!manager.ok()) return Fail(manager.status());

  auth::AuthOptions auth_options;
  auth_options.token_file = config.auth_token_file;
  auth_options.client_certificates = !config.tls_client_ca.empty();
  auth_options.admin_principals = config.admin_principals;
  auth_options.reload_interval = absl::Seconds(config.auth_reload_seconds);
  absl::StatusOr<std::unique_ptr<auth::Authenticator>> authenticator =
      auth::Authenticator::Create(auth_options);
  if (!authenticator.ok()) return Fail(authenticator.status());
  std::unique_ptr<auth::TokenFile> metrics_tokens;
  if (!config.metrics_token_file.empty()) {
    absl::StatusOr<std::unique_ptr<auth::TokenFile>> t = auth::TokenFile::Open(
        config.metrics_token_file, absl::Seconds(config.auth_reload_seconds));
    if (!t.ok()) {
      return Fail(absl::Status(
          t.status().code(),
          absl::StrCat("metrics-token-file: ", t.status().message())));
    }
    metrics_tokens = std::move(*t);
  }
  absl::StatusOr<std::shared_ptr<grpc::ServerCredentials>> credentials =
      GrpcCredentials(config);
  if (!credentials.ok()) return Fail(credentials.status());
  if (!config.authenticated()) {
    Log(LogLevel::kWarning, "",
        config.insecure
            ? "no authentication (--insecure): every caller is one anonymous "
              "admin"
            : "no authentication: every caller is one anonymous admin "
              "(loopback only)");
  } else if (config.tls_cert.empty()) {
    Log(LogLevel::kWarning, "",
        "bearer tokens over plaintext gRPC: anyone on the path can read "
        "them; serve TLS (--tls-cert, --tls-key) beyond loopback");
  }

  FusionServiceImpl service(manager->get(), &registry, authenticator->get(),
                            config.max_result_streams);
  grpc::EnableDefaultHealthCheckService(true);
  if (config.reflection) {
    grpc::reflection::InitProtoReflectionServerBuilderPlugin();
  }
  // Every RPC of every service counted (grpc_server_*), every method of
  // the services served exported from zero.
  GrpcServerMetrics grpc_metrics(&registry);
  std::vector<std::string> services = {kServiceName, "grpc.health.v1.Health"};
  if (config.reflection) {
    services.push_back("grpc.reflection.v1alpha.ServerReflection");
    services.push_back("grpc.reflection.v1.ServerReflection");
  }
  grpc::ServerBuilder builder;
  if (!config.reflection) {
    builder.SetOption(std::make_unique<WithoutReflection>());
  } else {
    // v1 beside gRPC's v1alpha (both resolve grpc.health.v1).
    builder.SetOption(std::make_unique<ReflectionV1Option>());
  }
  for (const std::string& name : services) {
    if (!grpc_metrics.InitService(name)) {
      Log(LogLevel::kWarning, "",
          absl::StrCat("metrics: no descriptor for service ", name));
    }
  }
  {
    std::vector<
        std::unique_ptr<grpc::experimental::ServerInterceptorFactoryInterface>>
        interceptors;
    interceptors.push_back(grpc_metrics.NewInterceptorFactory());
    builder.experimental().SetInterceptorCreators(std::move(interceptors));
  }
  int grpc_port = 0;
  builder.AddListeningPort(config.listen, *credentials, &grpc_port);
  builder.RegisterService(&service);
  // Keepalive (deploy/README.md, "Keepalive"): pings after keepalive-time
  // without activity, on every connection and also while no call is open;
  // pings go on for as long as a stream stays idle (no limit on pings
  // without data), which is what keeps a quiet watch alive through proxies.
  // Clients may ping every kMinClientPingIntervalSeconds; faster pingers get
  // strikes and then a GOAWAY (too_many_pings).
  builder.AddChannelArgument(
      GRPC_ARG_KEEPALIVE_TIME_MS,
      static_cast<int>(config.keepalive_time_seconds * 1000));
  builder.AddChannelArgument(
      GRPC_ARG_KEEPALIVE_TIMEOUT_MS,
      static_cast<int>(config.keepalive_timeout_seconds * 1000));
  builder.AddChannelArgument(GRPC_ARG_KEEPALIVE_PERMIT_WITHOUT_CALLS, 1);
  builder.AddChannelArgument(GRPC_ARG_HTTP2_MAX_PINGS_WITHOUT_DATA, 0);
  builder.AddChannelArgument(
      GRPC_ARG_HTTP2_MIN_RECV_PING_INTERVAL_WITHOUT_DATA_MS,
      ServerConfig::kMinClientPingIntervalSeconds * 1000);
  builder.AddChannelArgument(GRPC_ARG_HTTP2_MAX_PING_STRIKES, 2);
  // Specs are bounded by --max-spec-bytes; leave room for the envelope.
  builder.SetMaxReceiveMessageSize(static_cast<int>(config.max_spec_bytes) +
                                   (64 << 10));
  std::unique_ptr<grpc::Server> server = builder.BuildAndStart();
  if (server == nullptr || grpc_port == 0) {
    return Fail(absl::UnavailableError(
        absl::StrCat("listen: cannot serve gRPC on '", config.listen, "'")));
  }
  grpc::HealthCheckServiceInterface* health = server->GetHealthCheckService();
  // grpc.health.v1 and /readyz: SERVING until the drain, except while the
  // data directory cannot be written (server/serving_state.h).
  ServingState::Options serving_options;
  serving_options.data_dir = config.data_dir;
  serving_options.probe_interval = kDataDirProbeInterval;
  serving_options.on_change = [health](bool serving) {
    health->SetServingStatus(kServiceName, serving);
    health->SetServingStatus(serving);
  };
  ServingState serving(std::move(serving_options));
  serving.Start();

  absl::StatusOr<std::unique_ptr<MetricsHttpServer>> http =
      MetricsHttpServer::Start(
          config.metrics_listen, &registry,
          [&serving] { return serving.serving(); }, metrics_tokens.get());
  if (!http.ok()) {
    server->Shutdown();
    return Fail(http.status());
  }
  Log(LogLevel::kInfo, "",
      absl::StrCat("serving gRPC on ", config.listen, " (port ", grpc_port,
                   config.tls_cert.empty()        ? ", plaintext"
                   : config.tls_client_ca.empty() ? ", TLS"
                                                  : ", mTLS",
                   !config.auth_token_file.empty() ? ", bearer tokens" : "",
                   "), metrics on ", config.metrics_listen, " (port ",
                   (*http)->port(), "), data in ", config.data_dir));
  if (!config.ready_file.empty()) {
    nlohmann::json ports = {{"grpc_port", grpc_port},
                            {"metrics_port", (*http)->port()}};
    absl::Status s = WriteFileAtomically(config.ready_file, ports.dump());
    if (!s.ok()) Log(LogLevel::kError, "", s.ToString());
  }

  const int signal_number = NextShutdownSignal();
  const absl::Time deadline =
      absl::Now() + absl::Seconds(config.drain_timeout_seconds);
  Log(LogLevel::kInfo, "",
      absl::StrCat("signal ", signal_number, ": draining (deadline ",
                   config.drain_timeout_seconds, " s)"));
  auto* second_signal = new SecondSignal;
  std::thread(ExitOnSecondSignal, second_signal, manager->get()).detach();
  serving.BeginDrain();
  (*manager)->BeginDrain();
  // Leave a quarter of the time to end the RPCs once the jobs stopped.
  const absl::Time jobs_deadline =
      absl::Now() + (deadline - absl::Now()) * 3 / 4;
  const bool stopped = (*manager)->WaitForWorkers(jobs_deadline);
  // The service ends its streams itself (UNAVAILABLE: clients resume)
  // before Shutdown, which would cancel them.
  Log(LogLevel::kInfo, "",
      "draining: ending the open watch and result streams");
  service.CloseStreams();
  if (!service.WaitForStreams(deadline)) {
    Log(LogLevel::kWarning, "",
        "a stream did not end before the deadline (its client does not "
        "read); cancelling it");
  }
  server->Shutdown(absl::ToChronoTime(deadline));
  http->reset();
  {
    absl::MutexLock lock(&second_signal->mu);
    second_signal->drained = true;
  }
  if (!stopped) {
    // A tensor outlived the deadline. The store still says RUNNING, so the
    // job runs again after the restart, as after a crash.
    Log(LogLevel::kWarning, "",
        "a running job did not stop before the deadline; exiting anyway");
    std::_Exit(0);
  }
  server.reset();
  manager->reset();
  Log(LogLevel::kInfo, "", "drained; bye");
  return 0;
}

}  // namespace
}  // namespace tailor::server

int main(int argc, char** argv) {
  CLI::App app{
      "tailord: the tailor gRPC service. Runs Model Tailor fusion jobs "
      "submitted over gRPC (tailor.v1.FusionService), keeps them in a "
      "durable job store, streams their progress and results, and exposes "
      "Prometheus metrics. SIGTERM drains it gracefully; a second SIGTERM "
      "or SIGINT during the drain exits at once without waiting for running "
      "jobs (they resume from their journals at the next start)."};
  app.footer(
      "Exit status: 0 after a drain, 1 on a startup error, 2 on bad flags, "
      "3 when a second signal cut the drain short.");
  app.set_version_flag(
      "--version", absl::StrCat("tailord ", tailor::server::kBuildVersion, " (",
                                tailor::server::kBuildRevision, ")"));
  tailor::server::ServerFlags flags;
  flags.Add(app);
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e) == 0 ? 0 : 2;
  }
  absl::StatusOr<tailor::server::ServerConfig> config = flags.Resolve();
  if (!config.ok()) {
    std::cerr << "tailord: error: " << config.status().message() << "\n";
    return 2;
  }
  // Before any thread of ours starts (server/shutdown_signals.h).
  if (absl::Status s = tailor::server::InstallShutdownSignals(); !s.ok()) {
    std::cerr << "tailord: error: " << s.message() << "\n";
    return 1;
  }
  return tailor::server::Serve(*config);
}
