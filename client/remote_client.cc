#include "client/remote_client.h"

#include <google/protobuf/io/coded_stream.h>
#include <google/protobuf/io/zero_copy_stream_impl_lite.h>
#include <google/protobuf/wire_format_lite.h>
#include <grpcpp/generic/generic_stub.h>
#include <grpcpp/grpcpp.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <future>
#include <thread>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "util/file_util.h"
#include "util/sha256.h"

namespace tailor::cli {
namespace {

namespace v1 = ::tailor::v1;

absl::Status FromGrpc(const grpc::Status& s, const std::string& server) {
  if (s.ok()) return absl::OkStatus();
  std::string message = s.error_message();
  if (s.error_code() == grpc::StatusCode::UNAVAILABLE ||
      s.error_code() == grpc::StatusCode::DEADLINE_EXCEEDED) {
    message = absl::StrCat("server ", server, ": ", message);
  }
  return absl::Status(static_cast<absl::StatusCode>(s.error_code()), message);
}

}  // namespace

absl::StatusOr<Connection> Connect(const ConnectionOptions& options) {
  Connection c;
  c.token = options.token;
  for (char ch : c.token) {
    const unsigned char u = static_cast<unsigned char>(ch);
    if (u <= 0x20 || u >= 0x7f) {
      return absl::InvalidArgumentError(
          "token (--token-file or $TAILOR_TOKEN): must be printable ASCII "
          "without spaces");
    }
  }
  if (!options.tls()) {
    c.credentials = grpc::InsecureChannelCredentials();
    return c;
  }
  grpc::SslCredentialsOptions ssl;
  auto read = [](const char* flag, const std::string& path,
                 std::string* out) -> absl::Status {
    if (path.empty()) return absl::OkStatus();
    absl::StatusOr<std::string> text = ReadFileToString(path, 1 << 20);
    if (!text.ok()) {
      return absl::Status(text.status().code(),
                          absl::StrCat(flag, ": ", text.status().message()));
    }
    *out = std::move(*text);
    return absl::OkStatus();
  };
  if (options.tls_cert.empty() != options.tls_key.empty()) {
    return absl::InvalidArgumentError(
        "--tls-cert and --tls-key go together (the client certificate and "
        "its key, for mTLS)");
  }
  if (absl::Status s = read("--tls-ca", options.tls_ca, &ssl.pem_root_certs);
      !s.ok()) {
    return s;
  }
  if (absl::Status s =
          read("--tls-cert", options.tls_cert, &ssl.pem_cert_chain);
      !s.ok()) {
    return s;
  }
  if (absl::Status s = read("--tls-key", options.tls_key, &ssl.pem_private_key);
      !s.ok()) {
    return s;
  }
  c.credentials = grpc::SslCredentials(ssl);
  if (!options.tls_server_name.empty()) {
    c.arguments.SetSslTargetNameOverride(options.tls_server_name);
  }
  return c;
}

namespace {

// The channel arguments of RemoteClient (see its comment): keepalive that
// matches tailord's (deploy/README.md, "Keepalive") and a short reconnect
// backoff.
grpc::ChannelArguments WithKeepalive(grpc::ChannelArguments args) {
  args.SetInt(GRPC_ARG_KEEPALIVE_TIME_MS,
              RemoteClient::kKeepaliveTimeSeconds * 1000);
  args.SetInt(GRPC_ARG_KEEPALIVE_TIMEOUT_MS,
              RemoteClient::kKeepaliveTimeoutSeconds * 1000);
  args.SetInt(GRPC_ARG_KEEPALIVE_PERMIT_WITHOUT_CALLS, 0);
  args.SetInt(GRPC_ARG_HTTP2_MAX_PINGS_WITHOUT_DATA, 0);
  args.SetInt(GRPC_ARG_INITIAL_RECONNECT_BACKOFF_MS, 250);
  args.SetInt(GRPC_ARG_MAX_RECONNECT_BACKOFF_MS,
              RemoteClient::kMaxReconnectBackoffSeconds * 1000);
  return args;
}

// A request that names one job (Get, Cancel, Delete).
template <typename Request>
Request Naming(const std::string& name) {
  Request request;
  request.set_name(name);
  return request;
}

}  // namespace

RemoteClient::RemoteClient(const std::string& server, absl::Duration timeout,
                           absl::Duration watch_timeout, Connection connection)
    : server_(server),
      timeout_(timeout),
      watch_timeout_(watch_timeout),
      token_(connection.token),
      channel_(
          grpc::CreateCustomChannel(server,
                                    connection.credentials != nullptr
                                        ? connection.credentials
                                        : grpc::InsecureChannelCredentials(),
                                    WithKeepalive(connection.arguments))),
      stub_(v1::FusionService::NewStub(channel_)) {}

void RemoteClient::SetDeadline(grpc::ClientContext* context,
                               absl::Duration timeout) const {
  context->set_deadline(absl::ToChronoTime(absl::Now() + timeout));
  if (!token_.empty()) {
    context->AddMetadata("authorization", absl::StrCat("Bearer ", token_));
  }
}

template <typename Request, typename Response>
absl::StatusOr<Response> RemoteClient::Unary(
    grpc::Status (v1::FusionService::Stub::*method)(grpc::ClientContext*,
                                                    const Request&, Response*),
    const Request& request) {
  grpc::ClientContext context;
  SetDeadline(&context, timeout_);
  Response response;
  absl::Status s =
      FromGrpc(((*stub_).*method)(&context, request, &response), server_);
  if (!s.ok()) return s;
  return response;
}

absl::StatusOr<v1::FusionJob> RemoteClient::Create(
    const v1::CreateFusionJobRequest& request) {
  return Unary(&v1::FusionService::Stub::CreateFusionJob, request);
}

absl::StatusOr<v1::FusionJob> RemoteClient::Get(const std::string& name) {
  return Unary(&v1::FusionService::Stub::GetFusionJob,
               Naming<v1::GetFusionJobRequest>(name));
}

absl::StatusOr<v1::ListFusionJobsResponse> RemoteClient::List(
    const v1::ListFusionJobsRequest& request) {
  return Unary(&v1::FusionService::Stub::ListFusionJobs, request);
}

absl::StatusOr<v1::FusionJob> RemoteClient::Cancel(const std::string& name) {
  return Unary(&v1::FusionService::Stub::CancelFusionJob,
               Naming<v1::CancelFusionJobRequest>(name));
}

absl::Status RemoteClient::Delete(const std::string& name) {
  return Unary(&v1::FusionService::Stub::DeleteFusionJob,
               Naming<v1::DeleteFusionJobRequest>(name))
      .status();
}

absl::Status RemoteClient::Watch(
    const std::string& name, int64_t after_sequence,
    const std::function<void(const v1::JobEvent&)>& on_event,
    const std::atomic<bool>* interrupted) {
  grpc::ClientContext context;
  SetDeadline(&context, watch_timeout_);
  v1::WatchFusionJobRequest request;
  request.set_name(name);
  request.set_after_sequence(after_sequence);
  std::unique_ptr<grpc::ClientReader<v1::JobEvent>> reader =
      stub_->WatchFusionJob(&context, request);
  // A signal handler can only set a flag: this thread turns it into a
  // cancellation of the call (which ends the blocking Read below).
  std::atomic<bool> finished{false};
  std::thread canceller;
  if (interrupted != nullptr) {
    canceller = std::thread([&] {
      while (!finished.load()) {
        if (interrupted->load()) {
          context.TryCancel();
          return;
        }
        std::this_thread::sleep_for(std::chrono::milliseconds(50));
      }
    });
  }
  v1::JobEvent event;
  while (reader->Read(&event)) on_event(event);
  const grpc::Status status = reader->Finish();
  finished.store(true);
  if (canceller.joinable()) canceller.join();
  return FromGrpc(status, server_);
}

absl::StatusOr<RemoteClient::HealthStatus> RemoteClient::Health(
    const std::string& service) {
  // No generated stub for grpc.health.v1 ships with Debian's gRPC: the two
  // messages are encoded here. HealthCheckRequest { string service = 1; },
  // HealthCheckResponse { ServingStatus status = 1; }.
  std::string request;
  if (!service.empty()) {
    google::protobuf::io::StringOutputStream raw(&request);
    google::protobuf::io::CodedOutputStream out(&raw);
    out.WriteTag(google::protobuf::internal::WireFormatLite::MakeTag(
        1,
        google::protobuf::internal::WireFormatLite::WIRETYPE_LENGTH_DELIMITED));
    out.WriteVarint32(static_cast<uint32_t>(service.size()));
    out.WriteString(service);
  }
  grpc::Slice slice(request);
  grpc::ByteBuffer request_buffer(&slice, 1), response_buffer;
  grpc::ClientContext context;
  SetDeadline(&context, timeout_);
  grpc::GenericStub stub(channel_);
  std::promise<grpc::Status> done;
  stub.UnaryCall(&context, "/grpc.health.v1.Health/Check", grpc::StubOptions(),
                 &request_buffer, &response_buffer,
                 [&done](grpc::Status s) { done.set_value(std::move(s)); });
  const grpc::Status call = done.get_future().get();
  if (absl::Status s = FromGrpc(call, server_); !s.ok()) return s;
  std::vector<grpc::Slice> slices;
  std::string response;
  if (response_buffer.Valid()) {
    if (!response_buffer.Dump(&slices).ok()) {
      return absl::DataLossError("health: unreadable response");
    }
    for (const grpc::Slice& s : slices) {
      response.append(reinterpret_cast<const char*>(s.begin()), s.size());
    }
  }
  google::protobuf::io::CodedInputStream in(
      reinterpret_cast<const uint8_t*>(response.data()),
      static_cast<int>(response.size()));
  uint32_t status = 0;
  while (uint32_t tag = in.ReadTag()) {
    if (tag ==
        google::protobuf::internal::WireFormatLite::MakeTag(
            1, google::protobuf::internal::WireFormatLite::WIRETYPE_VARINT)) {
      if (!in.ReadVarint32(&status)) break;
    } else if (!google::protobuf::internal::WireFormatLite::SkipField(&in,
                                                                      tag)) {
      return absl::DataLossError(
          "health: malformed grpc.health.v1.HealthCheckResponse");
    }
  }
  if (status > kServiceUnknown) status = kUnknown;
  return static_cast<HealthStatus>(status);
}

absl::StatusOr<std::string> RemoteClient::Fetch(
    const std::string& name, v1::ReadJobResultRequest::Kind kind,
    const std::string& path) {
  // Stream into a temporary sibling; rename it into place only when the
  // size and digest check out.
  std::string temp = path + ".part-XXXXXX";
  const int fd = ::mkstemp(temp.data());
  if (fd < 0) return ErrnoError(errno, absl::StrCat("create ", temp));
  ScopedFd file(fd);
  ::fchmod(fd, 0644);
  Sha256 sha;

  grpc::ClientContext context;
  SetDeadline(&context, timeout_);
  v1::ReadJobResultRequest request;
  request.set_name(name);
  request.set_kind(kind);
  std::unique_ptr<grpc::ClientReader<v1::ResultChunk>> reader =
      stub_->ReadJobResult(&context, request);
  uint64_t received = 0, total = 0;
  std::string announced;
  v1::ResultChunk chunk;
  absl::Status problem;
  while (reader->Read(&chunk)) {
    if (!problem.ok()) continue;
    if (chunk.offset() != received) {
      problem = absl::DataLossError(
          absl::StrCat("result stream: chunk at offset ", chunk.offset(),
                       " after ", received, " bytes"));
      context.TryCancel();
      continue;
    }
    problem = PWriteFully(file.get(), chunk.data().data(), chunk.data().size(),
                          received, temp);
    sha.Update(chunk.data());
    received += chunk.data().size();
    total = chunk.total_size();
    if (!chunk.sha256().empty()) announced = chunk.sha256();
  }
  absl::Status s = FromGrpc(reader->Finish(), server_);
  if (s.ok()) s = problem;
  const std::string digest = sha.FinalHex();
  if (s.ok() && (received != total || announced.empty())) {
    s = absl::DataLossError(absl::StrCat("result stream ended after ", received,
                                         " of ", total,
                                         " bytes without its digest"));
  }
  if (s.ok() && digest != announced) {
    s = absl::DataLossError(absl::StrCat("result stream: SHA-256 ", digest,
                                         " != announced ", announced));
  }
  if (s.ok() && ::fsync(file.get()) != 0) {
    s = ErrnoError(errno, absl::StrCat("fsync ", temp));
  }
  if (s.ok() && ::rename(temp.c_str(), path.c_str()) != 0) {
    s = ErrnoError(errno, absl::StrCat("rename to ", path));
  }
  if (!s.ok()) {
    ::unlink(temp.c_str());
    return s;
  }
  absl::Status d = FsyncDirectory(Dirname(path));
  if (!d.ok()) return d;
  return announced;
}

}  // namespace tailor::cli
