#ifndef TAILOR_CLIENT_REMOTE_CLIENT_H_
#define TAILOR_CLIENT_REMOTE_CLIENT_H_

#include <atomic>
#include <functional>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "tailor/v1/fusion_service.grpc.pb.h"

namespace tailor::cli {

// tailorctl's connection to tailord: one channel, a deadline on every call,
// gRPC statuses turned back into absl::Status (same code and message) so
// that exit codes follow ExitCodeForStatus().
class RemoteClient {
 public:
  // `server`: HOST:PORT. `timeout`: the deadline of unary calls and of
  // result downloads; `watch_timeout`: the deadline of a watch.
  RemoteClient(const std::string& server, absl::Duration timeout,
               absl::Duration watch_timeout);

  absl::StatusOr<tailor::v1::FusionJob> Create(
      const tailor::v1::CreateFusionJobRequest& request);
  absl::StatusOr<tailor::v1::FusionJob> Get(const std::string& name);
  absl::StatusOr<tailor::v1::ListFusionJobsResponse> List(
      const tailor::v1::ListFusionJobsRequest& request);
  absl::StatusOr<tailor::v1::FusionJob> Cancel(const std::string& name);

  // Streams events after `after_sequence` to `on_event` until the server
  // ends the stream; returns its status. When `*interrupted` becomes true
  // (a signal handler's flag; polled every 50 ms) the call is cancelled
  // locally and returns CANCELLED: the job itself is not touched.
  absl::Status Watch(
      const std::string& name, int64_t after_sequence,
      const std::function<void(const tailor::v1::JobEvent&)>& on_event,
      const std::atomic<bool>* interrupted = nullptr);

  // Downloads a result into `path` (a temporary file renamed into place
  // once complete): checks that offsets are contiguous, the size and the
  // SHA-256. Returns the SHA-256 (hex). DATA_LOSS if a check fails.
  absl::StatusOr<std::string> Fetch(const std::string& name,
                                    tailor::v1::ReadJobResultRequest::Kind kind,
                                    const std::string& path);

 private:
  void SetDeadline(grpc::ClientContext* context, absl::Duration timeout) const;
  // One unary call with the unary deadline.
  template <typename Request, typename Response>
  absl::StatusOr<Response> Unary(
      grpc::Status (tailor::v1::FusionService::Stub::*method)(
          grpc::ClientContext*, const Request&, Response*),
      const Request& request);

  const std::string server_;
  const absl::Duration timeout_, watch_timeout_;
  std::unique_ptr<tailor::v1::FusionService::Stub> stub_;
};

}  // namespace tailor::cli

#endif  // TAILOR_CLIENT_REMOTE_CLIENT_H_
