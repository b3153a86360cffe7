#ifndef TAILOR_STORAGE_REMOTE_STORE_PROVIDER_H_
#define TAILOR_STORAGE_REMOTE_STORE_PROVIDER_H_

// The libcurl-backed ObjectStoreProvider: s3:// (AWS Signature Version 4),
// https:// (read-only, Range requests) and hf:// (a Hugging Face
// Hub-compatible endpoint). Configuration comes from `RemoteOptions` (flags)
// and the environment, read once at creation, the AWS way:
//   AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN,
//   AWS_REGION / AWS_DEFAULT_REGION, AWS_ENDPOINT_URL / AWS_ENDPOINT_URL_S3
//   (path-style addressing by default when a custom endpoint is named),
//   AWS_SHARED_CREDENTIALS_FILE, AWS_CONFIG_FILE, AWS_PROFILE;
//   HF_ENDPOINT (default https://huggingface.co), HF_TOKEN;
//   SSL_CERT_FILE when no --ca-file is given.
// Secrets never appear in logs, errors, or metrics.

#include <cstdint>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "storage/aws_config.h"
#include "storage/http_client.h"
#include "storage/object_store.h"
#include "storage/s3_store.h"

namespace tailor {

// The transport's settings (HttpClientOptions: the PEM bundle of CAs to
// trust for https -- s3 endpoints, https://, hf:// --, the connect and
// stall timeouts, attempts per idempotent request (1..100; 1 = no retries)
// and their backoff) and s3:// addressing: kAuto is path-style when a
// custom endpoint is named (AWS_ENDPOINT_URL[_S3] or the profile's
// endpoint_url), virtual-hosted on AWS itself.
struct RemoteOptions : HttpClientOptions {
  using S3Addressing = S3StoreOptions::Addressing;
  S3Addressing s3_addressing = S3Addressing::kAuto;
};

// INVALID_ARGUMENT naming the variable or file for a malformed setting
// (e.g. an unreadable AWS_SHARED_CREDENTIALS_FILE, a bad AWS_ENDPOINT_URL).
absl::StatusOr<std::shared_ptr<ObjectStoreProvider>> NewRemoteStoreProvider(
    const RemoteOptions& options);
// The same with the environment read through `env` (tests).
absl::StatusOr<std::shared_ptr<ObjectStoreProvider>> NewRemoteStoreProvider(
    const RemoteOptions& options, const EnvLookup& env);

}  // namespace tailor

#endif  // TAILOR_STORAGE_REMOTE_STORE_PROVIDER_H_
