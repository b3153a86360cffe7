#include "server/metrics_http_server.h"

#include <civetweb.h>

#include <cstring>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "util/log.h"

namespace tailor::server {
namespace {

constexpr char kThreads[] = "32";
constexpr char kRequestTimeoutMs[] = "3000";

int Reply(::mg_connection* conn, int code, const char* reason, const char* type,
          const std::string& body) {
  mg_printf(conn,
            "HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %zu\r\n"
            "Cache-Control: no-store\r\nConnection: close\r\n\r\n",
            code, reason, type, body.size());
  mg_write(conn, body.data(), body.size());
  return code;
}

int LogCivetweb(const ::mg_connection*, const char* message) {
  Log(LogLevel::kWarning, "", absl::StrCat("metrics http: ", message));
  return 1;
}

}  // namespace

absl::StatusOr<std::unique_ptr<MetricsHttpServer>> MetricsHttpServer::Start(
    const std::string& listen, metrics::Registry* registry,
    std::function<bool()> ready, const auth::TokenFile* tokens) {
  // civetweb wants its library initialised once per process.
  static const bool initialised = (mg_init_library(0), true);
  (void)initialised;
  std::unique_ptr<MetricsHttpServer> s(
      new MetricsHttpServer(registry, std::move(ready), tokens));
  // Each connection holds a worker thread until its request arrives, so
  // idle or slow clients must neither outnumber the workers nor hold them
  // long: probes (/healthz) are answered promptly with dozens of idle
  // connections open, and an idle one is dropped after a few seconds
  // (connections are never kept alive: every reply closes).
  const char* options[] = {"listening_ports",
                           listen.c_str(),
                           "num_threads",
                           kThreads,
                           "connection_queue",
                           "64",
                           "request_timeout_ms",
                           kRequestTimeoutMs,
                           "enable_keep_alive",
                           "no",
                           nullptr};
  mg_callbacks callbacks;
  std::memset(&callbacks, 0, sizeof(callbacks));
  callbacks.log_message = &LogCivetweb;
  s->context_ = mg_start(&callbacks, s.get(), options);
  if (s->context_ == nullptr) {
    return absl::UnavailableError(
        absl::StrCat("metrics-listen: cannot serve HTTP on '", listen,
                     "' (expected IPV4:PORT, with the port free)"));
  }
  mg_set_request_handler(s->context_, "/metrics$", &HandleMetrics, s.get());
  mg_set_request_handler(s->context_, "/healthz$", &HandleHealth, s.get());
  mg_set_request_handler(s->context_, "/readyz$", &HandleReady, s.get());
  mg_server_port ports[4];
  const int n = mg_get_server_ports(s->context_, 4, ports);
  if (n > 0) s->port_ = ports[0].port;
  return s;
}

MetricsHttpServer::~MetricsHttpServer() {
  if (context_ != nullptr) mg_stop(context_);
}

int MetricsHttpServer::HandleMetrics(::mg_connection* conn, void* self) {
  auto* s = static_cast<MetricsHttpServer*>(self);
  if (s->tokens_ != nullptr) {
    const char* header = mg_get_header(conn, "Authorization");
    const absl::string_view value = header != nullptr ? header : "";
    constexpr absl::string_view kScheme = "bearer ";
    const bool allowed =
        value.size() > kScheme.size() &&
        value.size() <= kScheme.size() + auth::kMaxTokenBytes &&
        absl::StartsWithIgnoreCase(value, kScheme) &&
        s->tokens_->Lookup(value.substr(kScheme.size())).has_value();
    if (!allowed) {
      mg_printf(conn,
                "HTTP/1.1 401 Unauthorized\r\nWWW-Authenticate: Bearer "
                "realm=\"tailord metrics\"\r\nContent-Type: text/plain; "
                "charset=utf-8\r\nContent-Length: 43\r\nCache-Control: "
                "no-store\r\nConnection: close\r\n\r\n"
                "/metrics needs Authorization: Bearer token\n");
      return 401;
    }
  }
  return Reply(conn, 200, "OK", "text/plain; version=0.0.4; charset=utf-8",
               s->registry_->Render());
}

int MetricsHttpServer::HandleHealth(::mg_connection* conn, void*) {
  return Reply(conn, 200, "OK", "text/plain; charset=utf-8", "ok\n");
}

int MetricsHttpServer::HandleReady(::mg_connection* conn, void* self) {
  auto* s = static_cast<MetricsHttpServer*>(self);
  if (s->ready_()) {
    return Reply(conn, 200, "OK", "text/plain; charset=utf-8", "ready\n");
  }
  return Reply(conn, 503, "Service Unavailable", "text/plain; charset=utf-8",
               "draining\n");
}

}  // namespace tailor::server
