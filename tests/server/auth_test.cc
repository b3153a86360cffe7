// Issue #14: the token file, the authenticator's rules (points 2, 4), and
// the safe-default listen check (point 5). Torch-free, no network.

#include <gtest/gtest.h>

#include <chrono>
#include <fstream>
#include <thread>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "server/auth/authenticator.h"
#include "server/auth/token_file.h"
#include "testing/temp_dir.h"
#include "util/sha256.h"

namespace tailor::server::auth {
namespace {

using ::tailor::testing::TempDir;

constexpr char kAliceToken[] = "alice-secret-token-0123456789";
constexpr char kRootToken[] = "root-secret-token-9876543210";

std::string TokenFileText() {
  return absl::StrCat(
      "# tailord tokens\n\n", Sha256Hex(kAliceToken), " alice\n",
      // Upper-case hex and a tab are fine too.
      absl::AsciiStrToUpper(Sha256Hex(kRootToken)), "\troot admin\n");
}

void WriteFile(const std::string& path, const std::string& text) {
  const std::string temp = path + ".tmp";
  std::ofstream(temp) << text;
  ASSERT_EQ(::rename(temp.c_str(), path.c_str()), 0);
}

TEST(TokenFileTest, ParsesDigestsPrincipalsAndRoles) {
  absl::StatusOr<std::vector<TokenEntry>> entries =
      ParseTokenFile(TokenFileText(), "tokens");
  ASSERT_TRUE(entries.ok()) << entries.status();
  ASSERT_EQ(entries->size(), 2u);
  EXPECT_EQ((*entries)[0].principal, "alice");
  EXPECT_EQ((*entries)[0].role, kRoleUser);
  EXPECT_EQ((*entries)[1].role, kRoleAdmin);
  std::optional<TokenEntry> found = LookupToken(*entries, kRootToken);
  ASSERT_TRUE(found.has_value());
  EXPECT_EQ(found->principal, "root");
  EXPECT_FALSE(
      LookupToken(*entries, "alice-secret-token-012345678").has_value());
  EXPECT_FALSE(LookupToken(*entries, "").has_value());
  EXPECT_TRUE((*entries)[0].roots.empty());
  // Per-principal roots, with or without a role.
  entries = ParseTokenFile(
      absl::StrCat(Sha256Hex("a"), " a root=/models/a root=/out/a\n",
                   Sha256Hex("b"), " b admin root=/b\n"),
      "tokens");
  ASSERT_TRUE(entries.ok()) << entries.status();
  EXPECT_EQ((*entries)[0].role, kRoleUser);
  EXPECT_EQ((*entries)[0].roots,
            (std::vector<std::string>{"/models/a", "/out/a"}));
  EXPECT_EQ((*entries)[1].role, kRoleAdmin);
  EXPECT_EQ((*entries)[1].roots, std::vector<std::string>{"/b"});
}

TEST(TokenFileTest, BadLinesNameFileAndLineButNeverTheDigest) {
  const std::string digest = Sha256Hex(kAliceToken);
  const struct {
    std::string text;
    const char* rule;
  } cases[] = {
      {absl::StrCat(digest, "\n"), "fields"},
      {absl::StrCat(kAliceToken, " alice\n"), "64 hex digits"},
      {absl::StrCat(digest.substr(0, 63), "g alice\n"), "64 hex digits"},
      {absl::StrCat(digest, " alice user nonroot\n"), "must be root=DIR"},
      {absl::StrCat(digest, " alice root=relative/dir\n"), "absolute"},
      {absl::StrCat(digest, " alice root=\n"), "absolute"},
      {absl::StrCat(digest, " al!ce\n"), "principal"},
      {absl::StrCat(digest, " ", std::string(129, 'a'), "\n"), "principal"},
      {absl::StrCat(digest, " alice root\n"), "role"},
      {absl::StrCat(digest, " alice\n", digest, " bob\n"), "repeats"},
  };
  for (const auto& c : cases) {
    absl::StatusOr<std::vector<TokenEntry>> entries =
        ParseTokenFile(c.text, "/etc/tailor/tokens");
    ASSERT_FALSE(entries.ok()) << c.text;
    const std::string message(entries.status().message());
    EXPECT_TRUE(absl::StartsWith(message, "/etc/tailor/tokens:")) << message;
    EXPECT_TRUE(absl::StrContains(message, c.rule)) << message;
    EXPECT_FALSE(absl::StrContains(message, digest.substr(0, 16))) << message;
    EXPECT_FALSE(absl::StrContains(message, kAliceToken)) << message;
  }
}

std::unique_ptr<Authenticator> Make(const AuthOptions& options) {
  absl::StatusOr<std::unique_ptr<Authenticator>> a =
      Authenticator::Create(options);
  EXPECT_TRUE(a.ok()) << a.status();
  return a.ok() ? std::move(*a) : nullptr;
}

class AuthenticatorTest : public ::testing::Test {
 protected:
  void SetUp() override {
    path_ = dir_.Join("tokens");
    WriteFile(path_, TokenFileText());
  }
  TempDir dir_;
  std::string path_;
};

TEST_F(AuthenticatorTest, WithoutAuthEveryoneIsTheAnonymousAdmin) {
  auto a = Make(AuthOptions{});
  EXPECT_FALSE(a->enabled());
  absl::StatusOr<Principal> p = a->Authenticate({}, std::nullopt);
  ASSERT_TRUE(p.ok());
  EXPECT_EQ(p->name, "");
  EXPECT_TRUE(p->admin());
  EXPECT_TRUE(p->ToCaller().MaySee("anyone"));
}

TEST_F(AuthenticatorTest, BearerTokens) {
  AuthOptions o;
  o.token_file = path_;
  auto a = Make(o);
  ASSERT_TRUE(a->enabled());
  const std::string bearer = absl::StrCat("Bearer ", kAliceToken);
  absl::StatusOr<Principal> alice = a->Authenticate({bearer}, std::nullopt);
  ASSERT_TRUE(alice.ok()) << alice.status();
  EXPECT_EQ(alice->name, "alice");
  EXPECT_FALSE(alice->admin());
  EXPECT_FALSE(alice->ToCaller().MaySee("root"));
  // The scheme is case-insensitive.
  const std::string lower = absl::StrCat("bearer ", kRootToken);
  EXPECT_TRUE(a->Authenticate({lower}, std::nullopt)->admin());

  const std::string oversized = "Bearer " + std::string(5000, 'x');
  const std::string non_ascii =
      absl::StrCat("Bearer ", kAliceToken, "\xc3\xa9");
  const std::string two = absl::StrCat("Bearer ", kAliceToken, " extra");
  const std::string unknown = "Bearer not-a-listed-token";
  const struct {
    std::vector<absl::string_view> values;
    const char* says;
  } refused[] = {
      {{}, "no credentials"},
      {{unknown}, "unknown bearer token"},
      {{kAliceToken}, "must be 'Bearer <token>'"},
      {{"Bearer "}, "must be 'Bearer <token>'"},
      {{"Basic YWxpY2U6cHc="}, "must be 'Bearer <token>'"},
      {{oversized}, "more than the"},
      {{non_ascii}, "printable ASCII"},
      {{two}, "printable ASCII"},
      {{bearer, bearer}, "sent 2 times"},
  };
  for (const auto& r : refused) {
    absl::StatusOr<Principal> p = a->Authenticate(r.values, std::nullopt);
    ASSERT_FALSE(p.ok()) << r.says;
    EXPECT_EQ(p.status().code(), absl::StatusCode::kUnauthenticated);
    EXPECT_TRUE(absl::StrContains(p.status().message(), r.says)) << p.status();
    EXPECT_FALSE(absl::StrContains(p.status().message(), kAliceToken));
    EXPECT_LT(p.status().message().size(), 400u);
  }
}

TEST_F(AuthenticatorTest, ClientCertificatesNameThePrincipal) {
  AuthOptions o;
  o.client_certificates = true;
  o.token_file = path_;
  o.admin_principals = {"ops.example.com"};
  auto a = Make(o);
  PeerCertificate peer;
  peer.dns_sans = {"svc.example.com", "other.example.com"};
  peer.uri_sans = {"spiffe://example.com/svc"};
  peer.common_name = "cn-name";
  EXPECT_EQ(a->Authenticate({}, peer)->name, "svc.example.com");
  peer.dns_sans.clear();
  EXPECT_EQ(a->Authenticate({}, peer)->name, "spiffe://example.com/svc");
  peer.uri_sans.clear();
  EXPECT_EQ(a->Authenticate({}, peer)->name, "cn-name");
  EXPECT_FALSE(a->Authenticate({}, peer)->admin());
  peer.common_name = "ops.example.com";
  EXPECT_TRUE(a->Authenticate({}, peer)->admin());
  peer.common_name = "bad name with spaces";
  EXPECT_EQ(a->Authenticate({}, peer).status().code(),
            absl::StatusCode::kUnauthenticated);
  // A token wins over the certificate; a bad token is never ignored.
  peer.common_name = "cn-name";
  const std::string bearer = absl::StrCat("Bearer ", kAliceToken);
  EXPECT_EQ(a->Authenticate({bearer}, peer)->name, "alice");
  EXPECT_EQ(a->Authenticate({"Bearer nope"}, peer).status().code(),
            absl::StatusCode::kUnauthenticated);
  // No certificate and no token.
  EXPECT_EQ(a->Authenticate({}, std::nullopt).status().code(),
            absl::StatusCode::kUnauthenticated);
}

TEST_F(AuthenticatorTest, BadTokenFileOrAdminIsAStartupError) {
  AuthOptions o;
  o.token_file = dir_.Join("missing");
  absl::StatusOr<std::unique_ptr<Authenticator>> a = Authenticator::Create(o);
  ASSERT_FALSE(a.ok());
  EXPECT_TRUE(absl::StrContains(a.status().message(), "auth-token-file"));
  o.token_file = path_;
  o.admin_principals = {"no spaces allowed"};
  EXPECT_EQ(Authenticator::Create(o).status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST_F(AuthenticatorTest, TokenFileIsReloadedWhenItChanges) {
  absl::StatusOr<std::unique_ptr<TokenFile>> file =
      TokenFile::Open(path_, absl::Milliseconds(100));
  ASSERT_TRUE(file.ok()) << file.status();
  EXPECT_TRUE((*file)->Lookup(kAliceToken).has_value());
  auto wait_generation = [&](int64_t n) {
    const auto deadline =
        std::chrono::steady_clock::now() + std::chrono::seconds(60);
    while ((*file)->generation() < n &&
           std::chrono::steady_clock::now() < deadline) {
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    return (*file)->generation() >= n;
  };
  // Revoke Alice, add Bob.
  WriteFile(path_, absl::StrCat(Sha256Hex("bob-token"), " bob\n"));
  ASSERT_TRUE(wait_generation(2));
  EXPECT_FALSE((*file)->Lookup(kAliceToken).has_value());
  EXPECT_EQ((*file)->Lookup("bob-token")->principal, "bob");
  // A broken file keeps the previous tokens.
  WriteFile(path_, "not a token file\n");
  std::this_thread::sleep_for(std::chrono::seconds(1));
  EXPECT_EQ((*file)->generation(), 2);
  EXPECT_TRUE((*file)->Lookup("bob-token").has_value());
  // So does a removed one; a fixed one loads.
  ::unlink(path_.c_str());
  std::this_thread::sleep_for(std::chrono::milliseconds(500));
  EXPECT_TRUE((*file)->Lookup("bob-token").has_value());
  WriteFile(path_, TokenFileText());
  ASSERT_TRUE(wait_generation(3));
  EXPECT_TRUE((*file)->Lookup(kAliceToken).has_value());
}

}  // namespace
}  // namespace tailor::server::auth
