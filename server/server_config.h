#ifndef TAILOR_SERVER_SERVER_CONFIG_H_
#define TAILOR_SERVER_SERVER_CONFIG_H_

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "CLI/CLI.hpp"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "jobs/device_pool.h"

namespace tailor::server {

// tailord's settings. The defaults work out of the box on one machine:
// loopback ports, a data directory under the working directory, and the
// working directory as the only allowed storage root.
struct ServerConfig {
  std::string listen = "127.0.0.1:50051";
  std::string metrics_listen = "127.0.0.1:9464";
  std::string data_dir = "tailord-data";
  // Local directories and remote prefixes (s3://bucket/prefix/, issue #16).
  std::vector<std::string> allowed_roots;  // empty: the working directory
  // Remote storage (issue #16): the CA bundle for https endpoints, and the
  // local read cache of remote checkpoints (cache_dir empty: none) with its
  // size cap. Remote outputs are staged under data_dir/remote-staging.
  std::string ca_file;
  std::string cache_dir;
  uint64_t cache_bytes = uint64_t{64} << 30;
  int max_concurrent_jobs = 1;
  // Compute threads of the process (0: the CPUs of the cgroup quota and
  // affinity mask) and the worker slots they are split into: tensors a job
  // computes at once, each with threads / cpu_workers BLAS threads (0: one
  // worker per thread). See util/cpu_tuning.h ConfigureComputeThreads.
  int threads = 0;
  int cpu_workers = 0;
  int max_queued_jobs = 100;
  int64_t max_spec_bytes = 64 << 10;
  double drain_timeout_seconds = 20;
  std::string ready_file;  // written once serving: {"grpc_port", ...}
  std::string log_level = "info";
  // "DEVICE=BYTES" or "DEVICE=FRACTION" (jobs::ParseDeviceBudget), at most
  // one per device; unset devices get the job manager's defaults.
  std::vector<std::string> device_memory_budgets;
  // Journal limits (jobs::JobManagerOptions): bytes per job's journal (0:
  // half the data volume's free space at the job's start), and free space
  // journal writes leave for the job store.
  int64_t journal_max_bytes = 0;
  int64_t journal_reserve_bytes = int64_t{256} << 20;
  // Crash-interrupted runs after which a job is FAILED at startup.
  int max_interrupted_runs = 2;
  // ReadJobResult streams open at once; more are RESOURCE_EXHAUSTED.
  int max_result_streams = 64;
  // How long finished jobs are kept (jobs::JobManagerOptions::
  // job_retention): a whole number with a unit s, m, h or d ("30d", "12h"),
  // or "0" for forever. See JobRetention().
  std::string job_retention = "30d";
  // HTTP/2 keepalive of the gRPC port (deploy/README.md, "Keepalive"):
  // tailord pings each connection after keepalive_time_seconds without
  // activity, idle watches included, so that proxies and load balancers do
  // not cut quiet streams, and drops a connection whose ping is not
  // answered within keepalive_timeout_seconds. Clients may ping every
  // kMinClientPingIntervalSeconds at most.
  double keepalive_time_seconds = 30;
  double keepalive_timeout_seconds = 20;
  static constexpr int kMinClientPingIntervalSeconds = 10;

  // Security (README "Security"). TLS: PEM certificate chain and key of the
  // gRPC port, both or neither; tls_client_ca (needs TLS) requires and
  // verifies client certificates (mTLS), whose first DNS/URI SAN (else CN)
  // is the caller's principal. auth_token_file: bearer tokens
  // (auth::ParseTokenFile). Certificates and token files are re-read when
  // they change, checked every auth_reload_seconds.
  std::string tls_cert, tls_key, tls_client_ca;
  std::string auth_token_file;
  std::vector<std::string> admin_principals;
  // Bearer tokens /metrics requires ("" : /metrics is open); /healthz and
  // /readyz stay open for probes.
  std::string metrics_token_file;
  double auth_reload_seconds = 5;
  // QUEUED jobs one principal may have at once (0: no quota).
  int max_queued_jobs_per_principal = 0;
  // Serve without authentication on a non-loopback address.
  bool insecure = false;
  // Register gRPC server reflection.
  bool reflection = true;

  // Whether callers are authenticated (tokens or client certificates).
  bool authenticated() const {
    return !auth_token_file.empty() || !tls_client_ca.empty();
  }

  // device_memory_budgets parsed; INVALID_ARGUMENT naming the setting.
  absl::StatusOr<std::map<std::string, jobs::DeviceBudget>> DeviceBudgets()
      const;

  // job_retention parsed (zero: forever); INVALID_ARGUMENT naming the
  // setting.
  absl::StatusOr<absl::Duration> JobRetention() const;

  // INVALID_ARGUMENT naming the setting and its rule.
  absl::Status Validate() const;
};

// Binds tailord's flags and --config. Parse, then call Resolve().
class ServerFlags {
 public:
  void Add(CLI::App& app);
  // The configuration: defaults, then the --config file (YAML, keys as the
  // long flag names with '-' or '_'), then the flags given on the command
  // line; validated.
  absl::StatusOr<ServerConfig> Resolve() const;

 private:
  CLI::App* app_ = nullptr;
  std::string config_file_;
  ServerConfig flags_;
};

// Reads a YAML config file over `config`. Unknown keys and wrongly typed
// values are INVALID_ARGUMENT naming the file and the key.
absl::Status LoadServerConfigFile(const std::string& path,
                                  ServerConfig* config);

}  // namespace tailor::server

#endif  // TAILOR_SERVER_SERVER_CONFIG_H_
