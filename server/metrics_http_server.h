#ifndef TAILOR_SERVER_METRICS_HTTP_SERVER_H_
#define TAILOR_SERVER_METRICS_HTTP_SERVER_H_

#include <functional>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "metrics/registry.h"
#include "server/auth/token_file.h"

struct mg_context;
struct mg_connection;

namespace tailor::server {

// The metrics endpoint (civetweb): GET /metrics (Prometheus text format
// 0.0.4 from `registry`), /healthz (200 while the process serves HTTP),
// /readyz (200 while `ready()` is true, else 503). Anything else is 404.
// With `tokens`, /metrics answers only a request with the header
// `Authorization: Bearer <token>` of a token in that file (else 401);
// /healthz and /readyz stay open for probes.
//
// Thread-safe; `registry`, `ready` and `tokens` must outlive the server.
class MetricsHttpServer {
 public:
  // `listen` is "IPV4:PORT"; port 0 picks a free port (see port()).
  static absl::StatusOr<std::unique_ptr<MetricsHttpServer>> Start(
      const std::string& listen, metrics::Registry* registry,
      std::function<bool()> ready, const auth::TokenFile* tokens = nullptr);
  ~MetricsHttpServer();  // stops serving (waits for requests in flight)

  int port() const { return port_; }

 private:
  MetricsHttpServer(metrics::Registry* registry, std::function<bool()> ready,
                    const auth::TokenFile* tokens)
      : registry_(registry), ready_(std::move(ready)), tokens_(tokens) {}
  static int HandleMetrics(::mg_connection* conn, void* self);
  static int HandleHealth(::mg_connection* conn, void* self);
  static int HandleReady(::mg_connection* conn, void* self);

  metrics::Registry* const registry_;
  const std::function<bool()> ready_;
  const auth::TokenFile* const tokens_;  // null: /metrics is open
  mg_context* context_ = nullptr;
  int port_ = 0;
};

}  // namespace tailor::server

#endif  // TAILOR_SERVER_METRICS_HTTP_SERVER_H_
