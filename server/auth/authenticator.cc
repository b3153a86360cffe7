#include "server/auth/authenticator.h"

#include <grpcpp/grpcpp.h>
#include <grpcpp/security/auth_context.h>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"

namespace tailor::server::auth {
namespace {

constexpr char kHowTo[] =
    "send the metadata 'authorization: Bearer <token>' with a token listed "
    "(as its SHA-256) in tailord's --auth-token-file";

absl::Status Unauthenticated(absl::string_view why) {
  return absl::UnauthenticatedError(why);
}

std::string Property(const grpc::AuthContext& ctx, const char* name,
                     bool first_only, std::vector<std::string>* all) {
  std::vector<grpc::string_ref> values = ctx.FindPropertyValues(name);
  for (const grpc::string_ref& v : values) {
    if (all != nullptr) all->emplace_back(v.data(), v.size());
    if (first_only) break;
  }
  return values.empty() ? "" : std::string(values[0].data(), values[0].size());
}

}  // namespace

absl::StatusOr<std::unique_ptr<Authenticator>> Authenticator::Create(
    const AuthOptions& options) {
  std::unique_ptr<TokenFile> tokens;
  if (!options.token_file.empty()) {
    absl::StatusOr<std::unique_ptr<TokenFile>> t =
        TokenFile::Open(options.token_file, options.reload_interval);
    if (!t.ok()) {
      return absl::Status(
          t.status().code(),
          absl::StrCat("auth-token-file: ", t.status().message()));
    }
    tokens = std::move(*t);
  }
  std::set<std::string> admins;
  for (const std::string& a : options.admin_principals) {
    if (!ValidPrincipalName(a)) {
      return absl::InvalidArgumentError(
          absl::StrCat("admin-principal: '", a.substr(0, kMaxPrincipalBytes),
                       "' is not a principal name (1-", kMaxPrincipalBytes,
                       " characters of [A-Za-z0-9._@:/+-])"));
    }
    admins.insert(a);
  }
  return std::unique_ptr<Authenticator>(new Authenticator(
      std::move(tokens), options.client_certificates, std::move(admins)));
}

Principal Authenticator::WithRole(std::string name, std::string role,
                                  std::vector<std::string> roots) const {
  if (admins_.count(name) > 0) role = kRoleAdmin;
  return Principal{std::move(name), std::move(role), std::move(roots)};
}

absl::StatusOr<Principal> Authenticator::Authenticate(
    const std::vector<absl::string_view>& authorization,
    const std::optional<PeerCertificate>& peer) const {
  if (!enabled()) return Principal{"", kRoleAdmin, {}};
  if (!authorization.empty()) {
    if (tokens_ == nullptr) {
      return Unauthenticated(
          "authorization: this server takes no bearer tokens (it has no "
          "--auth-token-file); authenticate with a client certificate");
    }
    if (authorization.size() > 1) {
      return Unauthenticated(absl::StrCat("authorization: sent ",
                                          authorization.size(),
                                          " times; send it once"));
    }
    const absl::string_view value = authorization[0];
    constexpr absl::string_view kScheme = "bearer ";
    if (value.size() > kScheme.size() + kMaxTokenBytes) {
      return Unauthenticated(absl::StrCat(
          "authorization: ", value.size(), " bytes, more than the ",
          kScheme.size() + kMaxTokenBytes, " allowed"));
    }
    if (value.size() <= kScheme.size() ||
        !absl::StartsWithIgnoreCase(value, kScheme)) {
      return Unauthenticated(
          absl::StrCat("authorization: must be 'Bearer <token>'; ", kHowTo));
    }
    const absl::string_view token = value.substr(kScheme.size());
    for (char c : token) {
      const unsigned char u = static_cast<unsigned char>(c);
      if (u <= 0x20 || u >= 0x7f) {
        return Unauthenticated(
            "authorization: the token must be printable ASCII without "
            "spaces");
      }
    }
    std::optional<TokenEntry> entry = tokens_->Lookup(token);
    if (!entry) {
      return Unauthenticated(
          "authorization: unknown bearer token (not in tailord's "
          "--auth-token-file, or revoked)");
    }
    return WithRole(entry->principal, entry->role, entry->roots);
  }
  if (certificates_ && peer) {
    std::string name;
    if (!peer->dns_sans.empty()) {
      name = peer->dns_sans[0];
    } else if (!peer->uri_sans.empty()) {
      name = peer->uri_sans[0];
    } else {
      name = peer->common_name;
    }
    if (!ValidPrincipalName(name)) {
      return Unauthenticated(absl::StrCat(
          "the client certificate's first DNS or URI SAN (else its CN) must "
          "be a principal name of 1-",
          kMaxPrincipalBytes, " characters of [A-Za-z0-9._@:/+-]"));
    }
    return WithRole(std::move(name), kRoleUser);
  }
  if (tokens_ == nullptr) {
    return Unauthenticated(
        "no client certificate: this server requires mTLS (--tls-client-ca)");
  }
  return Unauthenticated(absl::StrCat("no credentials: ", kHowTo));
}

std::optional<PeerCertificate> Authenticator::PeerOf(
    const grpc::AuthContext& ctx) {
  if (!ctx.IsPeerAuthenticated()) return std::nullopt;
  PeerCertificate peer;
  Property(ctx, GRPC_PEER_DNS_PROPERTY_NAME, false, &peer.dns_sans);
  Property(ctx, GRPC_PEER_URI_PROPERTY_NAME, false, &peer.uri_sans);
  peer.common_name = Property(ctx, GRPC_X509_CN_PROPERTY_NAME, true, nullptr);
  return peer;
}

absl::StatusOr<Principal> Authenticator::Authenticate(
    const grpc::ServerContextBase& context) const {
  if (!enabled()) return Principal{"", kRoleAdmin, {}};
  std::vector<absl::string_view> authorization;
  const auto& metadata = context.client_metadata();
  for (auto [it, end] = metadata.equal_range("authorization"); it != end;
       ++it) {
    authorization.emplace_back(it->second.data(), it->second.size());
  }
  std::optional<PeerCertificate> peer;
  if (certificates_) {
    std::shared_ptr<const grpc::AuthContext> ctx = context.auth_context();
    if (ctx != nullptr) peer = PeerOf(*ctx);
  }
  return Authenticate(authorization, peer);
}

}  // namespace tailor::server::auth
