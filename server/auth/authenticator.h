#ifndef TAILOR_SERVER_AUTH_AUTHENTICATOR_H_
#define TAILOR_SERVER_AUTH_AUTHENTICATOR_H_

// Who is calling: every FusionService handler asks the Authenticator first.
// Identity comes from a bearer token (the `authorization: Bearer <token>`
// metadata, checked against the token file) or, with mTLS, from the client
// certificate the TLS layer verified. Works the same over TLS and over
// plaintext loopback (gRPC's AuthMetadataProcessor cannot be set on
// insecure credentials, so the check lives here).

#include <memory>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "jobs/caller.h"
#include "server/auth/token_file.h"

namespace grpc {
class ServerContextBase;
class AuthContext;
}  // namespace grpc

namespace tailor::server::auth {

// An authenticated caller.
struct Principal {
  std::string name;  // "" only for the anonymous principal (no auth)
  std::string role;  // kRoleUser or kRoleAdmin
  // Its own allowed roots (token file root=DIR); empty: the server's.
  std::vector<std::string> roots;
  bool admin() const { return role == kRoleAdmin; }
  jobs::Caller ToCaller() const { return jobs::Caller{name, admin(), roots}; }
};

struct AuthOptions {
  // Bearer tokens (TokenFile); "" for none.
  std::string token_file;
  // mTLS: the client certificate (verified by the TLS layer) names the
  // principal when no bearer token is sent.
  bool client_certificates = false;
  // Principals (from a certificate or a token) given role admin whatever
  // their token file role.
  std::vector<std::string> admin_principals;
  // How often the token file is checked for changes.
  absl::Duration reload_interval = absl::Seconds(5);
};

// The peer identity of a TLS connection, from its auth context.
struct PeerCertificate {
  std::vector<std::string> dns_sans, uri_sans;
  std::string common_name;
};

// Thread-safe.
class Authenticator {
 public:
  // INVALID_ARGUMENT / NOT_FOUND naming the token file if it cannot be used.
  static absl::StatusOr<std::unique_ptr<Authenticator>> Create(
      const AuthOptions& options);

  // True when tokens or client certificates identify callers. Without,
  // every caller is one anonymous principal with role admin (single-user
  // tailord on loopback).
  bool enabled() const { return tokens_ != nullptr || certificates_; }

  // The caller of an RPC, or UNAUTHENTICATED with a message saying what is
  // wrong (never echoing the token).
  absl::StatusOr<Principal> Authenticate(
      const grpc::ServerContextBase& context) const;

  // The rules, without gRPC: `authorization` holds the values of the
  // `authorization` metadata key (none, one, or more), `peer` the verified
  // client certificate (nullopt: none).
  //  - a bearer token, when sent, must be well formed (`Bearer ` then 1 to
  //    kMaxTokenBytes printable ASCII characters, no spaces; at most one
  //    authorization value) and listed in the token file; its principal
  //    wins over a certificate's;
  //  - otherwise a verified client certificate names the principal: its
  //    first DNS SAN, else its first URI SAN, else its CN (which must be a
  //    valid principal name, see ValidPrincipalName);
  //  - otherwise UNAUTHENTICATED.
  absl::StatusOr<Principal> Authenticate(
      const std::vector<absl::string_view>& authorization,
      const std::optional<PeerCertificate>& peer) const;

  // The client certificate of a connection (nullopt: none).
  static std::optional<PeerCertificate> PeerOf(const grpc::AuthContext& ctx);

 private:
  Authenticator(std::unique_ptr<TokenFile> tokens, bool certificates,
                std::set<std::string> admins)
      : tokens_(std::move(tokens)),
        certificates_(certificates),
        admins_(std::move(admins)) {}
  Principal WithRole(std::string name, std::string role,
                     std::vector<std::string> roots = {}) const;

  const std::unique_ptr<TokenFile> tokens_;  // null: no tokens
  const bool certificates_;
  const std::set<std::string> admins_;
};

}  // namespace tailor::server::auth

#endif  // TAILOR_SERVER_AUTH_AUTHENTICATOR_H_
