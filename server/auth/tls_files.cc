#include "server/auth/tls_files.h"

#include <openssl/bio.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>

#include <memory>

#include "absl/strings/str_cat.h"
#include "util/file_util.h"

namespace tailor::server::auth {
namespace {

constexpr size_t kMaxPemBytes = 1 << 20;

struct BioFree {
  void operator()(BIO* b) const { BIO_free(b); }
};
struct X509Free {
  void operator()(X509* x) const { X509_free(x); }
};
struct KeyFree {
  void operator()(EVP_PKEY* k) const { EVP_PKEY_free(k); }
};

absl::StatusOr<std::string> Read(const char* setting, const std::string& path) {
  absl::StatusOr<std::string> text = ReadFileToString(path, kMaxPemBytes);
  if (!text.ok()) {
    return absl::Status(text.status().code(),
                        absl::StrCat(setting, ": ", text.status().message()));
  }
  return text;
}

std::unique_ptr<BIO, BioFree> Bio(const std::string& text) {
  return std::unique_ptr<BIO, BioFree>(
      BIO_new_mem_buf(text.data(), static_cast<int>(text.size())));
}

}  // namespace

absl::Status CheckTlsFiles(const std::string& cert, const std::string& key,
                           const std::string& client_ca) {
  absl::StatusOr<std::string> cert_text = Read("tls-cert", cert);
  if (!cert_text.ok()) return cert_text.status();
  std::unique_ptr<X509, X509Free> x509(
      PEM_read_bio_X509(Bio(*cert_text).get(), nullptr, nullptr, nullptr));
  ERR_clear_error();
  if (x509 == nullptr) {
    return absl::InvalidArgumentError(
        absl::StrCat("tls-cert: ", cert,
                     " holds no PEM certificate (-----BEGIN "
                     "CERTIFICATE-----)"));
  }
  absl::StatusOr<std::string> key_text = Read("tls-key", key);
  if (!key_text.ok()) return key_text.status();
  std::unique_ptr<EVP_PKEY, KeyFree> pkey(
      PEM_read_bio_PrivateKey(Bio(*key_text).get(), nullptr, nullptr, nullptr));
  ERR_clear_error();
  if (pkey == nullptr) {
    return absl::InvalidArgumentError(absl::StrCat(
        "tls-key: ", key,
        " holds no unencrypted PEM private key (-----BEGIN PRIVATE KEY-----)"));
  }
  const int match = X509_check_private_key(x509.get(), pkey.get());
  ERR_clear_error();
  if (match != 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("tls-key: ", key,
                     " is not the private key of the "
                     "certificate in ",
                     cert));
  }
  if (!client_ca.empty()) {
    absl::StatusOr<std::string> ca_text = Read("tls-client-ca", client_ca);
    if (!ca_text.ok()) return ca_text.status();
    std::unique_ptr<X509, X509Free> ca(
        PEM_read_bio_X509(Bio(*ca_text).get(), nullptr, nullptr, nullptr));
    ERR_clear_error();
    if (ca == nullptr) {
      return absl::InvalidArgumentError(absl::StrCat(
          "tls-client-ca: ", client_ca, " holds no PEM CA certificate"));
    }
  }
  return absl::OkStatus();
}

}  // namespace tailor::server::auth
