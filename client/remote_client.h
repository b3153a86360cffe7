#ifndef TAILOR_CLIENT_REMOTE_CLIENT_H_
#define TAILOR_CLIENT_REMOTE_CLIENT_H_

#include <grpcpp/grpcpp.h>

#include <atomic>
#include <functional>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "tailor/v1/fusion_service.grpc.pb.h"

namespace tailor::cli {

// How to reach tailord: the transport (plaintext or TLS, with a client
// certificate for mTLS) and the bearer token sent with every call.
struct ConnectionOptions {
  std::string token;  // "" : no authorization metadata
  // TLS is used when any of these is set. tls_ca: PEM roots to verify the
  // server with ("" : the system's roots); tls_cert + tls_key: the client
  // certificate; tls_server_name: the name the server's certificate must
  // have (default: the host of --server).
  std::string tls_ca, tls_cert, tls_key, tls_server_name;
  bool tls() const {
    return !tls_ca.empty() || !tls_cert.empty() || !tls_server_name.empty();
  }
};

// Reads the files ConnectionOptions name (token file, PEM files) into a
// channel's credentials and the token: INVALID_ARGUMENT / NOT_FOUND naming
// the flag.
struct Connection {
  std::shared_ptr<grpc::ChannelCredentials> credentials;
  grpc::ChannelArguments arguments;
  std::string token;
};
absl::StatusOr<Connection> Connect(const ConnectionOptions& options);

// tailorctl's connection to tailord: one channel, a deadline on every call,
// gRPC statuses turned back into absl::Status (same code and message) so
// that exit codes follow ExitCodeForStatus(). The channel pings tailord
// every kKeepaliveTimeSeconds of silence while a call is open (a quiet
// watch included; tailord accepts pings every 10 s), and reconnects after
// a lost connection with a backoff of at most kMaxReconnectBackoffSeconds
// (gRPC's default grows to 120 s).
class RemoteClient {
 public:
  static constexpr int kKeepaliveTimeSeconds = 30;
  static constexpr int kKeepaliveTimeoutSeconds = 20;
  static constexpr int kMaxReconnectBackoffSeconds = 5;

  // `server`: HOST:PORT. `timeout`: the deadline of unary calls and of
  // result downloads; `watch_timeout`: the deadline of a watch.
  RemoteClient(const std::string& server, absl::Duration timeout,
               absl::Duration watch_timeout, Connection connection = {});

  absl::StatusOr<tailor::v1::FusionJob> Create(
      const tailor::v1::CreateFusionJobRequest& request);
  absl::StatusOr<tailor::v1::FusionJob> Get(const std::string& name);
  absl::StatusOr<tailor::v1::ListFusionJobsResponse> List(
      const tailor::v1::ListFusionJobsRequest& request);
  absl::StatusOr<tailor::v1::FusionJob> Cancel(const std::string& name);
  absl::Status Delete(const std::string& name);

  // Streams events after `after_sequence` to `on_event` until the server
  // ends the stream; returns its status. When `*interrupted` becomes true
  // (a signal handler's flag; polled every 50 ms) the call is cancelled
  // locally and returns CANCELLED: the job itself is not touched.
  absl::Status Watch(
      const std::string& name, int64_t after_sequence,
      const std::function<void(const tailor::v1::JobEvent&)>& on_event,
      const std::atomic<bool>* interrupted = nullptr);

  // grpc.health.v1.Health/Check of `service` ("": the server as a whole):
  // the serving status the server reports (HealthStatus), or the call's
  // failure (UNAVAILABLE: unreachable; NOT_FOUND: a service it does not
  // know). The unary deadline applies; the token is sent if set.
  enum HealthStatus {
    kUnknown = 0,
    kServing = 1,
    kNotServing = 2,
    kServiceUnknown = 3
  };
  absl::StatusOr<HealthStatus> Health(const std::string& service);

  // Downloads a result into `path` (a temporary file renamed into place
  // once complete): checks that offsets are contiguous, the size and the
  // SHA-256. Returns the SHA-256 (hex). DATA_LOSS if a check fails.
  absl::StatusOr<std::string> Fetch(const std::string& name,
                                    tailor::v1::ReadJobResultRequest::Kind kind,
                                    const std::string& path);

 private:
  // The deadline and the authorization metadata.
  void SetDeadline(grpc::ClientContext* context, absl::Duration timeout) const;
  // One unary call with the unary deadline.
  template <typename Request, typename Response>
  absl::StatusOr<Response> Unary(
      grpc::Status (tailor::v1::FusionService::Stub::*method)(
          grpc::ClientContext*, const Request&, Response*),
      const Request& request);

  const std::string server_;
  const absl::Duration timeout_, watch_timeout_;
  const std::string token_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<tailor::v1::FusionService::Stub> stub_;
};

}  // namespace tailor::cli

#endif  // TAILOR_CLIENT_REMOTE_CLIENT_H_
