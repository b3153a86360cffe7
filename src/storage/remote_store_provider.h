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
#include "absl/time/time.h"
#include "storage/aws_config.h"
#include "storage/object_store.h"

namespace tailor {

struct RemoteOptions {
  // PEM bundle of CAs to trust for https (s3 endpoints, https://, hf://);
  // empty: SSL_CERT_FILE if set, else the system store.
  std::string ca_file;
  absl::Duration connect_timeout = absl::Seconds(30);
  // A request that transfers nothing for this long is retried.
  absl::Duration stall_timeout = absl::Seconds(60);
  // Attempts per idempotent request (1 = no retries); backoff is
  // exponential with full jitter, starting at `initial_backoff`.
  int max_attempts = 5;
  absl::Duration initial_backoff = absl::Milliseconds(200);
  // s3:// addressing: kAuto is path-style when a custom endpoint is named
  // (AWS_ENDPOINT_URL[_S3] or the profile's endpoint_url), virtual-hosted
  // on AWS itself.
  enum class S3Addressing { kAuto, kPath, kVirtual };
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
