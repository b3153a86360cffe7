#ifndef TAILOR_SERVER_AUTH_TLS_FILES_H_
#define TAILOR_SERVER_AUTH_TLS_FILES_H_

// The TLS files of tailord's gRPC port, checked at startup so that a wrong
// path or a mismatched key is a clear startup error rather than failing
// handshakes. (gRPC's FileWatcherCertificateProvider re-reads them later,
// and keeps the old pair while a new one does not load or match.)

#include <string>

#include "absl/status/status.h"

namespace tailor::server::auth {

// `cert`: PEM certificate chain; `key`: its PEM private key (they must
// match); `client_ca` ("" for none): a PEM bundle of at least one CA
// certificate. INVALID_ARGUMENT / NOT_FOUND naming the setting and file.
// Never logs or returns key material.
absl::Status CheckTlsFiles(const std::string& cert, const std::string& key,
                           const std::string& client_ca);

}  // namespace tailor::server::auth

#endif  // TAILOR_SERVER_AUTH_TLS_FILES_H_
