// Issue #14 end to end in C++ (the Python security_test.py drives the same
// server through grpcio): tailord serving TLS with a certificate made here
// by the openssl CLI and bearer tokens from --auth-token-file, driven by the
// real tailorctl binary. No token and a wrong token are UNAUTHENTICATED
// (exit 5), the right one submits and reads a job, another user's job is
// NOT_FOUND (exit 4: existence is not revealed) and an admin sees it.
// Torch-free: the checkpoints are written byte by byte.

#include <gtest/gtest.h>
#include <sys/stat.h>

#include <cctype>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "testing/tailord_process.h"
#include "testing/temp_dir.h"
#include "util/file_util.h"
#include "util/sha256.h"

namespace tailor {
namespace {

using ::tailor::testing::CommandResult;
using ::tailor::testing::RunWithInput;
using ::tailor::testing::TailordProcess;
using ::tailor::testing::TempDir;

constexpr char kAlice[] = "alice-token-e2e-5b1f0c9a7d";
constexpr char kBob[] = "bob-token-e2e-9c8d7e6f5a4b";
constexpr char kAdmin[] = "admin-token-e2e-0f1e2d3c4b";
constexpr char kWrong[] = "not-a-listed-token-123456";

// Single-quoted for sh (temporary paths and tokens here have no quote).
std::string Q(const std::string& s) { return absl::StrCat("'", s, "'"); }

void Write(const std::string& path, const std::string& data) {
  ASSERT_TRUE(WriteFileAtomically(path, data).ok()) << path;
}

// A safetensors file of one F32 4x4 tensor "m.proj.weight" = offset + 0.1 i.
std::string Checkpoint(float offset) {
  std::string header = R"({"m.proj.weight":{"dtype":"F32","shape":[4,4],)"
                       R"("data_offsets":[0,64]}})";
  while (header.size() % 8 != 0) header.push_back(' ');
  std::string out;
  for (int i = 0; i < 8; ++i) {
    out.push_back(static_cast<char>((header.size() >> (8 * i)) & 0xff));
  }
  out += header;
  for (int i = 0; i < 16; ++i) {
    const float v = offset + 0.1f * static_cast<float>(i);
    char bytes[4];
    std::memcpy(bytes, &v, 4);  // little-endian hosts (x86-64, arm64)
    out.append(bytes, 4);
  }
  return out;
}

class SecurityEndToEndTest : public ::testing::Test {
 protected:
  void SetUp() override {
    for (const char* sub : {"base", "ft"}) {
      ASSERT_EQ(::mkdir(tmp_.Join(sub).c_str(), 0755), 0);
    }
    Write(tmp_.Join("base/model.safetensors"), Checkpoint(0.0f));
    Write(tmp_.Join("ft/model.safetensors"), Checkpoint(0.05f));
    // A CA and a server certificate for localhost / 127.0.0.1 it signs.
    Openssl(
        "req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes "
        "-keyout ca.key -out ca.pem -days 2 -subj /CN=e2e-ca "
        "-addext basicConstraints=critical,CA:TRUE "
        "-addext keyUsage=critical,keyCertSign,cRLSign");
    Write(tmp_.Join("server.ext"),
          "basicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n"
          "subjectAltName=DNS:localhost,IP:127.0.0.1\n");
    Openssl(
        "req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes "
        "-keyout server.key -out server.csr -subj /CN=tailord");
    Openssl(
        "x509 -req -in server.csr -CA ca.pem -CAkey ca.key -set_serial 7 "
        "-days 2 -out server.pem -extfile server.ext");
    // Digests only: the token file never holds a token.
    Write(tmp_.Join("tokens"),
          absl::StrCat("# e2e tokens\n", Sha256Hex(kAlice), " alice\n",
                       Sha256Hex(kBob), " bob\n", Sha256Hex(kAdmin),
                       " root admin\n"));
    const std::vector<std::pair<std::string, std::string>> files = {
        {"alice", kAlice}, {"bob", kBob}, {"admin", kAdmin}, {"wrong", kWrong}};
    for (const auto& [name, token] : files) {
      Write(tmp_.Join(absl::StrCat(name, ".token")), absl::StrCat(token, "\n"));
    }
    Write(tmp_.Join("job.yaml"),
          absl::StrCat("pretrained: ", tmp_.Join("base"),
                       "\ntasks:\n  - finetuned: ", tmp_.Join("ft"),
                       "\nmethod: task_arithmetic\ndevice: cpu\nout: ",
                       tmp_.Join("fused"), "\n"));
  }

  void Openssl(const std::string& args) {
    const CommandResult r =
        RunWithInput(absl::StrCat("cd ", Q(tmp_.path()), " && openssl ", args),
                     "", tmp_.path());
    ASSERT_EQ(r.code, 0) << "openssl " << args << "\n" << r.output;
  }

  std::unique_ptr<TailordProcess> Start() {
    auto p = std::make_unique<TailordProcess>(
        tmp_.Join("data"),
        std::vector<std::string>{"--allowed-root", tmp_.path(), "--tls-cert",
                                 tmp_.Join("server.pem"), "--tls-key",
                                 tmp_.Join("server.key"), "--auth-token-file",
                                 tmp_.Join("tokens")},
        tmp_.path());
    EXPECT_TRUE(p->ok()) << p->failure() << "\n" << p->Log();
    return p;
  }

  // tailorctl `args` against `server` over TLS (trusting the test CA), as
  // `who` ("" for no token: neither --token-file nor $TAILOR_TOKEN).
  CommandResult Ctl(const TailordProcess& server, const std::string& who,
                    const std::string& args) {
    const char* bin = std::getenv("TAILORCTL");
    if (bin == nullptr) {
      ADD_FAILURE() << "TAILORCTL is not set (run the test through ctest)";
      return {};
    }
    std::string cmd =
        absl::StrCat("env -u TAILOR_TOKEN ", Q(bin), " ", args, " --server ",
                     server.address(), " --tls-ca ", Q(tmp_.Join("ca.pem")),
                     " --tls-server-name localhost --timeout 120");
    if (!who.empty()) {
      absl::StrAppend(&cmd, " --token-file ",
                      Q(tmp_.Join(absl::StrCat(who, ".token"))));
    }
    return RunWithInput(cmd, "", tmp_.path());
  }

  TempDir tmp_;
};

TEST_F(SecurityEndToEndTest, TokensOverTlsGateAndScopeJobs) {
  auto server = Start();
  ASSERT_TRUE(server->ok());

  // No credentials, or a token the file does not list: UNAUTHENTICATED.
  CommandResult r = Ctl(*server, "", "list");
  EXPECT_EQ(r.code, 5) << r.output;
  EXPECT_TRUE(absl::StrContains(r.output, "no credentials")) << r.output;
  r = Ctl(*server, "wrong", "list");
  EXPECT_EQ(r.code, 5) << r.output;
  EXPECT_FALSE(absl::StrContains(r.output, kWrong)) << "token echoed";

  // Alice's token: her job runs and she reads it.
  r = Ctl(*server, "alice",
          "submit -f " + Q(tmp_.Join("job.yaml")) + " --wait -q");
  ASSERT_EQ(r.code, 0) << r.output << server->Log();
  EXPECT_TRUE(absl::StrContains(r.output, "SUCCEEDED")) << r.output;
  const size_t at = r.output.find("fusionJobs/");
  ASSERT_NE(at, std::string::npos) << r.output;
  size_t end = at + std::strlen("fusionJobs/");
  while (end < r.output.size() &&
         (std::isalnum(static_cast<unsigned char>(r.output[end])) != 0 ||
          r.output[end] == '-')) {
    ++end;
  }
  const std::string name = r.output.substr(at, end - at);
  EXPECT_TRUE(PathExists(tmp_.Join("fused/model.safetensors")));
  r = Ctl(*server, "alice", "get " + name + " -o json");
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_TRUE(absl::StrContains(r.output, name)) << r.output;
  EXPECT_TRUE(absl::StrContains(r.output, "alice")) << r.output;

  // Bob cannot see it (NOT_FOUND, as for a job that does not exist) nor
  // find it in his list; the admin can.
  r = Ctl(*server, "bob", "get " + name);
  EXPECT_EQ(r.code, 4) << r.output;
  EXPECT_TRUE(absl::StrContains(r.output, "no job named")) << r.output;
  r = Ctl(*server, "bob", "list");
  EXPECT_EQ(r.code, 0) << r.output;
  EXPECT_FALSE(absl::StrContains(r.output, name)) << r.output;
  r = Ctl(*server, "admin", "get " + name + " -o json");
  EXPECT_EQ(r.code, 0) << r.output;
  EXPECT_TRUE(absl::StrContains(r.output, name)) << r.output;

  // Plaintext against the TLS port never reaches the service.
  const char* bin = std::getenv("TAILORCTL");
  ASSERT_NE(bin, nullptr);
  r = RunWithInput(
      absl::StrCat("env -u TAILOR_TOKEN ", Q(bin), " get ", name, " --server ",
                   server->address(), " --token-file ",
                   Q(tmp_.Join("alice.token")), " --timeout 20"),
      "", tmp_.path());
  EXPECT_NE(r.code, 0) << r.output;

  // No token ever reaches the server's log.
  const std::string log = server->Log();
  for (const char* token : {kAlice, kBob, kAdmin, kWrong}) {
    EXPECT_FALSE(absl::StrContains(log, token)) << "token in the log";
  }
}

}  // namespace
}  // namespace tailor
