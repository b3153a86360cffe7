#include "server/server_config.h"

#include <arpa/inet.h>
#include <netinet/in.h>

#include <string>
#include <type_traits>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_replace.h"
#include "util/field_error.h"
#include "util/file_util.h"
#include "yaml-cpp/yaml.h"

namespace tailor::server {
namespace {

absl::Status CheckHostPort(absl::string_view key, const std::string& value) {
  const size_t colon = value.rfind(':');
  if (colon == std::string::npos || colon == 0 || colon + 1 == value.size()) {
    return FieldError(key,
                      absl::StrCat("must be HOST:PORT, not '", value, "'"));
  }
  for (size_t i = colon + 1; i < value.size(); ++i) {
    if (value[i] < '0' || value[i] > '9') {
      return FieldError(key,
                        absl::StrCat("port must be a number in '", value, "'"));
    }
  }
  if (value.size() - colon - 1 > 5 ||
      std::stoi(value.substr(colon + 1)) > 65535) {
    return FieldError(key, "port must be at most 65535");
  }
  return absl::OkStatus();
}

// 127.0.0.0/8, ::1 and localhost.
bool IsLoopbackHost(absl::string_view host) {
  if (host.size() >= 2 && host.front() == '[' && host.back() == ']') {
    host = host.substr(1, host.size() - 2);
  }
  if (host == "localhost" || host == "::1") return true;
  in_addr addr;
  const std::string h(host);
  if (::inet_pton(AF_INET, h.c_str(), &addr) == 1) {
    return (ntohl(addr.s_addr) >> 24) == 127;
  }
  return false;
}

template <typename T>
absl::Status Read(const YAML::Node& node, const std::string& where,
                  const char* type, T* out) {
  try {
    if (!node.IsScalar())
      return FieldError(where, absl::StrCat("must be ", type));
    *out = node.as<T>();
    return absl::OkStatus();
  } catch (const YAML::Exception&) {
    return FieldError(
        where, absl::StrCat("must be ", type, ", not '", node.Scalar(), "'"));
  }
}

// The YAML value of a scalar setting, as its field's type: the kind of
// value its error names.
template <typename T>
constexpr const char* ValueKind() {
  if constexpr (std::is_same_v<T, std::string>) {
    return "a string";
  } else if constexpr (std::is_same_v<T, bool>) {
    return "true or false";
  } else if constexpr (std::is_floating_point_v<T>) {
    return "a number of seconds";  // every floating setting is a duration
  } else {
    static_assert(std::is_integral_v<T>);
    return "an integer";
  }
}

// config->*Field from a YAML scalar.
template <auto Field>
absl::Status ReadScalar(const YAML::Node& v, const std::string& where,
                        ServerConfig* config) {
  using T = std::remove_reference_t<decltype(config->*Field)>;
  return Read(v, where, ValueKind<T>(), &(config->*Field));
}

// config->*Field (a list of strings) from a YAML string or list of strings;
// replaces the default.
template <auto Field>
absl::Status ReadStringList(const YAML::Node& v, const std::string& where,
                            ServerConfig* config) {
  std::vector<std::string>& list = config->*Field;
  list.clear();
  absl::Status s;
  if (v.IsScalar()) {
    list.push_back(v.Scalar());
  } else if (v.IsSequence()) {
    for (size_t i = 0; i < v.size() && s.ok(); ++i) {
      std::string item;
      s = Read(v[i], absl::StrCat(where, "[", i, "]"), "a string", &item);
      list.push_back(item);
    }
  } else {
    s = FieldError(where, "must be a string or a list of strings");
  }
  return s;
}

// device-memory-budget: a list of "DEVICE=VALUE", or a mapping DEVICE:
// VALUE.
absl::Status ReadDeviceBudgets(const YAML::Node& v, const std::string& where,
                               ServerConfig* config) {
  config->device_memory_budgets.clear();
  absl::Status s;
  if (v.IsScalar()) {
    config->device_memory_budgets.push_back(v.Scalar());
  } else if (v.IsSequence()) {
    for (size_t i = 0; i < v.size() && s.ok(); ++i) {
      std::string item;
      s = Read(v[i], absl::StrCat(where, "[", i, "]"), "a string", &item);
      config->device_memory_budgets.push_back(item);
    }
  } else if (v.IsMap()) {
    for (const auto& d : v) {
      std::string value;
      s = Read(d.second, absl::StrCat(where, ".", d.first.Scalar()), "a string",
               &value);
      if (!s.ok()) break;
      config->device_memory_budgets.push_back(
          absl::StrCat(d.first.Scalar(), "=", value));
    }
  } else {
    s = FieldError(where,
                   "must be DEVICE=VALUE, a list of them, or a mapping "
                   "DEVICE: VALUE");
  }
  return s;
}

// to->*Field = from.*Field: a flag's value over the file's.
template <auto Field>
void CopyField(const ServerConfig& from, ServerConfig* to) {
  to->*Field = from.*Field;
}

// Binds `flag` to flags->*Field in `app`; "{default}" in `help` becomes
// the field's default (string settings).
template <auto Field>
CLI::Option* AddOption(CLI::App& app, const char* flag, std::string help,
                       ServerConfig* flags) {
  using T = std::remove_reference_t<decltype(flags->*Field)>;
  if constexpr (std::is_same_v<T, std::string>) {
    help = absl::StrReplaceAll(help, {{"{default}", ServerConfig().*Field}});
  }
  return app.add_option(flag, flags->*Field, std::move(help));
}
// The same for a flag without a value (bool).
template <auto Field>
CLI::Option* AddFlag(CLI::App& app, const char* flag, std::string help,
                     ServerConfig* flags) {
  return app.add_flag(flag, flags->*Field, std::move(help));
}

// Every setting, defined once: its flag (the config file's key is the flag
// without "--", '-' or '_' between words) and --help text, how the file's
// value is read, the copy of its field from the parsed flags into the
// configuration (Resolve, when the flag is given), and how ServerFlags::Add
// binds the flag to that field. In --help order.
struct FlagSetting {
  const char* flag;
  const char* help;
  absl::Status (*read)(const YAML::Node& v, const std::string& where,
                       ServerConfig* config);
  void (*copy)(const ServerConfig& from, ServerConfig* to);
  CLI::Option* (*add)(CLI::App& app, const char* flag, std::string help,
                      ServerConfig* flags);
};

template <auto Field>
constexpr FlagSetting Scalar(const char* flag, const char* help) {
  return {flag, help, &ReadScalar<Field>, &CopyField<Field>, &AddOption<Field>};
}
template <auto Field>
constexpr FlagSetting Flag(const char* flag, const char* help) {
  return {flag, help, &ReadScalar<Field>, &CopyField<Field>, &AddFlag<Field>};
}
template <auto Field>
constexpr FlagSetting StringList(const char* flag, const char* help) {
  return {flag, help, &ReadStringList<Field>, &CopyField<Field>,
          &AddOption<Field>};
}

constexpr FlagSetting kFlagSettings[] = {
    Scalar<&ServerConfig::listen>(
        "--listen",
        "gRPC address HOST:PORT (port 0: any free port; default {default})"),
    Scalar<&ServerConfig::metrics_listen>(
        "--metrics-listen",
        "HTTP address IPV4:PORT for /metrics, /healthz, /readyz "
        "(port 0: any free port; default {default})"),
    Scalar<&ServerConfig::data_dir>(
        "--data-dir",
        "directory of the job store (jobs.db), created if missing; "
        "no job output may touch it (default {default})"),
    StringList<&ServerConfig::allowed_roots>(
        "--allowed-root",
        "directory or remote prefix (s3://bucket/prefix/, "
        "https://host/path/, hf://org/repo/) every job URI must lie "
        "under; an output must lie strictly inside it (repeatable; "
        "default: the working directory, and no remote URI)"),
    Scalar<&ServerConfig::ca_file>(
        "--ca-file",
        "PEM bundle of CAs to trust for https:// and s3:// endpoints "
        "(default: SSL_CERT_FILE, else the system store)"),
    Scalar<&ServerConfig::cache_dir>(
        "--cache-dir",
        "local read cache for remote checkpoints, keyed by URI, ETag "
        "and size, shared safely by concurrent jobs (default: none)"),
    Scalar<&ServerConfig::cache_bytes>(
        "--cache-bytes",
        "size cap of --cache-dir in bytes; least recently used "
        "entries not in use are evicted (default 64 GiB)"),
    Scalar<&ServerConfig::max_concurrent_jobs>(
        "--max-concurrent-jobs",
        "jobs that run at the same time, 1..256 (default 1)"),
    Scalar<&ServerConfig::threads>(
        "--threads",
        "compute threads of the process, 0..256 (default 0: the "
        "CPUs of the cgroup's CPU quota and affinity mask)"),
    Scalar<&ServerConfig::cpu_workers>(
        "--cpu-workers",
        "tensors one job computes at once, 0..256; each worker gets "
        "threads / cpu-workers (at least 1) OpenBLAS threads and 1 "
        "LibTorch intra-op thread (default 0: one worker per "
        "compute thread, 1 thread each)"),
    Scalar<&ServerConfig::max_queued_jobs>(
        "--max-queued-jobs",
        "queued jobs allowed; more creates are RESOURCE_EXHAUSTED "
        "(default 100)"),
    Scalar<&ServerConfig::max_spec_bytes>(
        "--max-spec-bytes",
        "largest job spec accepted (as JSON), 1024..4194304 bytes; "
        "larger is RESOURCE_EXHAUSTED (default 65536)"),
    Scalar<&ServerConfig::drain_timeout_seconds>(
        "--drain-timeout",
        "seconds from SIGTERM to exit, in (0, 30) (default 20)"),
    Scalar<&ServerConfig::journal_max_bytes>(
        "--journal-max-bytes",
        "bytes one job's resume journal may take on the data volume; "
        "past it the job goes on without journalling (0, the "
        "default: half the volume's free space at the job's start)"),
    Scalar<&ServerConfig::journal_reserve_bytes>(
        "--journal-reserve-bytes",
        "free bytes journal writes always leave on the data volume "
        "for the job store (default 268435456)"),
    Scalar<&ServerConfig::max_interrupted_runs>(
        "--max-interrupted-runs",
        "a job whose runs the server did not survive (crash, kill) "
        "this many times in a row is FAILED at startup instead of "
        "run again; drains do not count, 1..100 (default 2)"),
    Scalar<&ServerConfig::max_result_streams>(
        "--max-result-streams",
        "ReadJobResult streams open at once; more are "
        "RESOURCE_EXHAUSTED, 1..4096 (default 64)"),
    Scalar<&ServerConfig::job_retention>(
        "--job-retention",
        "delete finished jobs (record, events, journal; never their "
        "outputs) this long after they ended: a whole number with "
        "unit s, m, h or d, or 0 to keep them forever; swept at "
        "startup and every minute (default 30d)"),
    Scalar<&ServerConfig::keepalive_time_seconds>(
        "--keepalive-time",
        "seconds without activity after which tailord pings a "
        "connection (idle watches included), so that proxies do not "
        "cut quiet streams; 1..86400 (default 30). Clients may ping "
        "every 10 s at most"),
    Scalar<&ServerConfig::keepalive_timeout_seconds>(
        "--keepalive-timeout",
        "seconds to wait for a ping's answer before dropping the "
        "connection, 1..600 (default 20)"),
    Scalar<&ServerConfig::tls_cert>(
        "--tls-cert",
        "PEM certificate chain of the gRPC port: serve TLS (with "
        "--tls-key); re-read when it changes"),
    Scalar<&ServerConfig::tls_key>(
        "--tls-key", "PEM private key of --tls-cert; re-read when it changes"),
    Scalar<&ServerConfig::tls_client_ca>(
        "--tls-client-ca",
        "PEM CA bundle: require client certificates it signed "
        "(mTLS); a caller's principal is its certificate's first "
        "DNS SAN, else first URI SAN, else CN"),
    Scalar<&ServerConfig::auth_token_file>(
        "--auth-token-file",
        "bearer tokens: lines 'SHA256-HEX-OF-TOKEN PRINCIPAL "
        "[user|admin] [root=DIR]...' ('#' comments; root=DIR: that "
        "principal's jobs must also lie inside DIR); callers send "
        "'authorization: Bearer <token>'; re-read when it changes"),
    StringList<&ServerConfig::admin_principals>(
        "--admin-principal",
        "principal (from a token or a client certificate) with role "
        "admin: sees and acts on every job (repeatable)"),
    Scalar<&ServerConfig::metrics_token_file>(
        "--metrics-token-file",
        "token file (same format) whose tokens /metrics requires "
        "as 'Authorization: Bearer <token>' (default: /metrics is "
        "open; /healthz and /readyz always are)"),
    Scalar<&ServerConfig::auth_reload_seconds>(
        "--auth-reload-interval",
        "seconds between checks of the certificate and token files "
        "for changes, 1..3600 (default 5)"),
    Scalar<&ServerConfig::max_queued_jobs_per_principal>(
        "--max-queued-jobs-per-principal",
        "queued jobs one principal may have; more of its creates are "
        "RESOURCE_EXHAUSTED (default 0: no quota)"),
    Flag<&ServerConfig::insecure>(
        "--insecure",
        "allow a non-loopback --listen without authentication "
        "(without it tailord refuses to start)"),
    Scalar<&ServerConfig::reflection>(
        "--reflection",
        "serve gRPC server reflection, grpc.reflection.v1 and "
        "v1alpha, true|false (default true; like grpc.health.v1 it "
        "needs no credentials)"),
    Scalar<&ServerConfig::ready_file>(
        "--ready-file",
        "write {\"grpc_port\": N, \"metrics_port\": M} here once "
        "serving (for scripts and tests using port 0)"),
    Scalar<&ServerConfig::log_level>("--log-level",
                                     "debug|info|warning|error (default info)"),
    {"--device-memory-budget",
     "memory the device pool lets running tensors reserve on a device, as "
     "DEVICE=BYTES (suffixes K M G T, Ki Mi Gi Ti) or DEVICE=FRACTION of "
     "its memory, with a dot (0.5, 1.0); DEVICE: cpu, cuda (every CUDA "
     "device) or cuda:N (repeatable; default cpu=0.5 of physical RAM or of "
     "the cgroup memory limit, cuda=0.9 of device memory)",
     &ReadDeviceBudgets, &CopyField<&ServerConfig::device_memory_budgets>,
     &AddOption<&ServerConfig::device_memory_budgets>},
};

// The setting whose config-file key is `key` ('-' between words); null if
// none.
const FlagSetting* FindSetting(absl::string_view key) {
  for (const FlagSetting& f : kFlagSettings) {
    if (absl::string_view(f.flag).substr(2) == key) return &f;
  }
  return nullptr;
}

}  // namespace

absl::StatusOr<absl::Duration> ServerConfig::JobRetention() const {
  const std::string& v = job_retention;
  if (v == "0") return absl::ZeroDuration();
  constexpr char kRule[] =
      "must be a whole number with a unit s, m, h or d (e.g. 30d, 12h), or 0 "
      "to keep finished jobs forever";
  int64_t n = 0;
  if (v.size() < 2 || v.size() > 12 ||
      !absl::SimpleAtoi(absl::string_view(v).substr(0, v.size() - 1), &n) ||
      n < 0 || v[0] == '+' || v[0] == '-') {
    return FieldError("job-retention",
                      absl::StrCat(kRule, ", not '", v.substr(0, 40), "'"));
  }
  absl::Duration unit;
  switch (v.back()) {
    case 's':
      unit = absl::Seconds(1);
      break;
    case 'm':
      unit = absl::Minutes(1);
      break;
    case 'h':
      unit = absl::Hours(1);
      break;
    case 'd':
      unit = absl::Hours(24);
      break;
    default:
      return FieldError("job-retention",
                        absl::StrCat(kRule, ", not '", v.substr(0, 40), "'"));
  }
  const absl::Duration d = n * unit;
  if (d > absl::Hours(24 * 36500)) {
    return FieldError("job-retention", "must be at most 36500 days");
  }
  return d;
}

absl::Status ServerConfig::Validate() const {
  if (absl::Status s = CheckHostPort("listen", listen); !s.ok()) return s;
  if (absl::Status s = CheckHostPort("metrics-listen", metrics_listen);
      !s.ok()) {
    return s;
  }
  if (data_dir.empty()) return FieldError("data-dir", "must not be empty");
  if (max_concurrent_jobs < 1 || max_concurrent_jobs > 256) {
    return FieldError("max-concurrent-jobs", "must be in 1..256");
  }
  if (threads < 0 || threads > 256) {
    return FieldError("threads", "must be in 0..256 (0: the available CPUs)");
  }
  if (cpu_workers < 0 || cpu_workers > 256) {
    return FieldError("cpu-workers",
                      "must be in 0..256 (0: one worker per compute thread)");
  }
  if (max_queued_jobs < 1) return FieldError("max-queued-jobs", "must be >= 1");
  if (max_spec_bytes < 1024 || max_spec_bytes > (4 << 20)) {
    return FieldError("max-spec-bytes", "must be in 1024..4194304");
  }
  if (!(drain_timeout_seconds > 0 && drain_timeout_seconds < 30)) {
    return FieldError("drain-timeout",
                      "must be in (0, 30) seconds (shorter than Kubernetes' "
                      "default 30 s grace period)");
  }
  if (journal_max_bytes < 0) {
    return FieldError("journal-max-bytes",
                      "must be >= 0 (0: half the free space at a job's start)");
  }
  if (journal_reserve_bytes < 0) {
    return FieldError("journal-reserve-bytes", "must be >= 0");
  }
  if (max_interrupted_runs < 1 || max_interrupted_runs > 100) {
    return FieldError("max-interrupted-runs", "must be in 1..100");
  }
  if (max_result_streams < 1 || max_result_streams > 4096) {
    return FieldError("max-result-streams", "must be in 1..4096");
  }
  if (absl::Status s = JobRetention().status(); !s.ok()) return s;
  if (!(keepalive_time_seconds >= 1 && keepalive_time_seconds <= 86400)) {
    return FieldError("keepalive-time",
                      "must be in 1..86400 seconds (below the idle timeout "
                      "of every proxy between clients and tailord)");
  }
  if (!(keepalive_timeout_seconds >= 1 && keepalive_timeout_seconds <= 600)) {
    return FieldError("keepalive-timeout", "must be in 1..600 seconds");
  }
  if (tls_cert.empty() != tls_key.empty()) {
    return FieldError(tls_cert.empty() ? "tls-cert" : "tls-key",
                      "--tls-cert and --tls-key go together (PEM certificate "
                      "chain and its private key)");
  }
  if (!tls_client_ca.empty() && tls_cert.empty()) {
    return FieldError("tls-client-ca",
                      "needs TLS: give --tls-cert and --tls-key too");
  }
  if (!(auth_reload_seconds >= 1 && auth_reload_seconds <= 3600)) {
    return FieldError("auth-reload-interval", "must be in 1..3600 seconds");
  }
  if (max_queued_jobs_per_principal < 0) {
    return FieldError("max-queued-jobs-per-principal",
                      "must be >= 0 (0: no per-principal quota)");
  }
  if (!admin_principals.empty() && !authenticated()) {
    return FieldError("admin-principal",
                      "needs authentication (--auth-token-file or "
                      "--tls-client-ca): without it every caller is admin");
  }
  if (!authenticated() && !insecure) {
    const std::string host = listen.substr(0, listen.rfind(':'));
    if (!IsLoopbackHost(host)) {
      return FieldError(
          "listen",
          absl::StrCat(
              "'", listen.substr(0, 300),
              "' is not a loopback address, and tailord authenticates no "
              "one (no --auth-token-file, no --tls-client-ca): anyone who "
              "can reach the port could submit jobs that read anything "
              "under the allowed roots and write into the outputs, read "
              "every job's results and cancel every job. Configure "
              "authentication (see README.md, 'Security'), listen on "
              "127.0.0.1, or pass --insecure to serve without it anyway"));
    }
  }
  if (log_level != "debug" && log_level != "info" && log_level != "warning" &&
      log_level != "error") {
    return FieldError("log-level", "must be debug, info, warning or error");
  }
  return DeviceBudgets().status();
}

absl::StatusOr<std::map<std::string, jobs::DeviceBudget>>
ServerConfig::DeviceBudgets() const {
  std::map<std::string, jobs::DeviceBudget> budgets;
  for (const std::string& text : device_memory_budgets) {
    absl::StatusOr<std::pair<std::string, jobs::DeviceBudget>> b =
        jobs::ParseDeviceBudget(text);
    if (!b.ok())
      return FieldError("device-memory-budget", b.status().message());
    if (!budgets.emplace(b->first, b->second).second) {
      return FieldError(
          "device-memory-budget",
          absl::StrCat("device ", b->first, " is given more than once"));
    }
  }
  return budgets;
}

absl::Status LoadServerConfigFile(const std::string& path,
                                  ServerConfig* config) {
  absl::StatusOr<std::string> text = ReadFileToString(path, 1 << 20);
  if (!text.ok()) return text.status();
  YAML::Node root;
  try {
    root = YAML::Load(*text);
  } catch (const YAML::Exception& e) {
    return absl::InvalidArgumentError(
        absl::StrCat(path, ": not valid YAML: ", e.what()));
  }
  if (root.IsNull()) return absl::OkStatus();
  if (!root.IsMap()) {
    return FieldError(path, "must be a mapping of settings");
  }
  for (const auto& kv : root) {
    const std::string key =
        absl::StrReplaceAll(kv.first.as<std::string>(), {{"_", "-"}});
    const std::string where = absl::StrCat(path, ": ", key);
    const YAML::Node& v = kv.second;
    const FlagSetting* setting = FindSetting(key);
    const absl::Status s =
        setting == nullptr
            ? FieldError(where, "unknown setting (see tailord --help)")
            : setting->read(v, where, config);
    if (!s.ok()) return s;
  }
  return absl::OkStatus();
}

void ServerFlags::Add(CLI::App& app) {
  app_ = &app;
  app.add_option("--config", config_file_,
                 "YAML file with any of these settings (keys: the long flag "
                 "names, '-' or '_'); flags given here override it")
      ->check(CLI::ExistingFile);
  for (const FlagSetting& f : kFlagSettings) {
    f.add(app, f.flag, f.help, &flags_);
  }
  app.get_option("--cache-bytes")->check(CLI::PositiveNumber);
}

absl::StatusOr<ServerConfig> ServerFlags::Resolve() const {
  ServerConfig config;
  if (!config_file_.empty()) {
    absl::Status s = LoadServerConfigFile(config_file_, &config);
    if (!s.ok()) return s;
  }
  for (const FlagSetting& f : kFlagSettings) {
    if (app_->count(f.flag) > 0) f.copy(flags_, &config);
  }
  absl::Status s = config.Validate();
  if (!s.ok()) return s;
  return config;
}

}  // namespace tailor::server
