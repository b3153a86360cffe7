// The libcurl-backed ObjectStoreProvider (storage/remote_store_provider.h).

#include "storage/remote_store_provider.h"

#include <cstdio>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "storage/hf_store.h"
#include "storage/http_client.h"
#include "storage/https_store.h"
#include "storage/s3_store.h"
#include "util/quote.h"
#include "util/status_macros.h"

namespace tailor {
namespace {

constexpr char kDefaultHfEndpoint[] = "https://huggingface.co";

// One store per scheme: s3 (one endpoint, every bucket), https (every
// host), hf (one endpoint). Immutable after creation, so thread-safe.
class RemoteStoreProvider : public ObjectStoreProvider {
 public:
  RemoteStoreProvider(std::shared_ptr<ObjectStore> s3,
                      std::shared_ptr<ObjectStore> https,
                      std::shared_ptr<ObjectStore> hf)
      : s3_(std::move(s3)), https_(std::move(https)), hf_(std::move(hf)) {}

  absl::StatusOr<std::shared_ptr<ObjectStore>> StoreFor(
      const ObjectUri& uri) override {
    if (uri.scheme == "s3") return s3_;
    if (uri.scheme == "https") return https_;
    if (uri.scheme == "hf") return hf_;
    return absl::UnimplementedError(
        absl::StrCat("no object store serves the scheme ",
                     Quote(uri.scheme, 32), " (s3, https and hf are served)"));
  }

 private:
  const std::shared_ptr<ObjectStore> s3_;
  const std::shared_ptr<ObjectStore> https_;
  const std::shared_ptr<ObjectStore> hf_;
};

}  // namespace

absl::StatusOr<std::shared_ptr<ObjectStoreProvider>> NewRemoteStoreProvider(
    const RemoteOptions& options) {
  return NewRemoteStoreProvider(options, ProcessEnv);
}

absl::StatusOr<std::shared_ptr<ObjectStoreProvider>> NewRemoteStoreProvider(
    const RemoteOptions& options, const EnvLookup& env) {
  if (options.max_attempts < 1 || options.max_attempts > 100) {
    return absl::InvalidArgumentError("remote max_attempts must be 1..100");
  }
  HttpClientOptions http_options = options;
  if (!options.ca_file.empty()) {
    // Named but unreadable is a configuration error now, not a TLS error
    // at the first request.
    FILE* f = std::fopen(options.ca_file.c_str(), "r");
    if (f == nullptr) {
      return absl::InvalidArgumentError(absl::StrCat(
          "--ca-file ", Quote(options.ca_file), ": cannot be read"));
    }
    std::fclose(f);
  }
  auto http = std::make_shared<HttpClient>(std::move(http_options));

  S3StoreOptions s3;
  TAILOR_ASSIGN_OR_RETURN(s3.aws, LoadAwsConfig(env));
  s3.addressing = options.s3_addressing;
  std::string hf_endpoint = env("HF_ENDPOINT");
  if (hf_endpoint.empty()) hf_endpoint = kDefaultHfEndpoint;
  TAILOR_ASSIGN_OR_RETURN(hf_endpoint,
                          CheckEndpointUrl(hf_endpoint, "HF_ENDPOINT"));
  return std::shared_ptr<ObjectStoreProvider>(new RemoteStoreProvider(
      std::make_shared<S3Store>(std::move(s3), http),
      std::make_shared<HttpsStore>(http),
      std::make_shared<HfStore>(http, std::move(hf_endpoint),
                                env("HF_TOKEN"))));
}

}  // namespace tailor
