#include "storage/uri_resolver.h"

#include <stdlib.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <functional>
#include <initializer_list>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "gtest/gtest.h"

namespace tailor {
namespace {

// Checks the code and that the message contains every one of `parts`.
::testing::AssertionResult IsError(const absl::Status& status,
                                   absl::StatusCode code,
                                   std::initializer_list<std::string> parts) {
  if (status.code() != code) {
    return ::testing::AssertionFailure()
           << "expected code " << absl::StatusCodeToString(code) << ", got "
           << status;
  }
  for (const std::string& part : parts) {
    if (status.message().find(part) == absl::string_view::npos) {
      return ::testing::AssertionFailure()
             << "message of " << status << " lacks '" << part << "'";
    }
  }
  if (status.message().find('\0') != absl::string_view::npos) {
    return ::testing::AssertionFailure() << "message contains a raw NUL";
  }
  return ::testing::AssertionSuccess();
}

template <typename T>
::testing::AssertionResult IsError(const absl::StatusOr<T>& result,
                                   absl::StatusCode code,
                                   std::initializer_list<std::string> parts) {
  if (result.ok()) {
    return ::testing::AssertionFailure() << "expected an error, got OK";
  }
  return IsError(result.status(), code, parts);
}

std::string RealPathOrDie(const std::string& path) {
  char* resolved = ::realpath(path.c_str(), nullptr);
  if (resolved == nullptr) {
    ADD_FAILURE() << "realpath(" << path << ") failed";
    return path;
  }
  std::string out(resolved);
  ::free(resolved);
  return out;
}

void WriteFile(const std::string& path) {
  std::ofstream out(path);
  out << "x";
  ASSERT_TRUE(out.good()) << path;
}

void MakeDir(const std::string& path) {
  ASSERT_EQ(::mkdir(path.c_str(), 0755), 0) << path;
}

void MakeSymlink(const std::string& target, const std::string& link) {
  ASSERT_EQ(::symlink(target.c_str(), link.c_str()), 0) << link;
}

// Tree, with <tmp> canonical:
//   <tmp>/data/                      root
//     file.txt, with space.txt, %2e%2e (a file literally named so)
//     sub/inner.txt
//     link_in -> sub/inner.txt       (inside: allowed)
//     link_in_dir -> <tmp>/data/sub  (inside: allowed)
//     link_out -> <tmp>/outside/secret.txt
//     link_out_dir -> <tmp>/outside
//     dangling_out -> <tmp>/outside/new.txt (missing)
//     loop -> loop
//     noperm/ (mode 000) with hidden.txt
//   <tmp>/data2/file.txt             prefix-trick sibling
//   <tmp>/outside/secret.txt
class UriResolverTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    std::string tmpl =
        absl::StrCat(::testing::TempDir(), "/uri_resolver_test_XXXXXX");
    ASSERT_NE(::mkdtemp(tmpl.data()), nullptr);
    tmp_ = new std::string(RealPathOrDie(tmpl));
    data_ = new std::string(*tmp_ + "/data");
    data2_ = new std::string(*tmp_ + "/data2");
    outside_ = new std::string(*tmp_ + "/outside");
    MakeDir(*data_);
    MakeDir(*data2_);
    MakeDir(*outside_);
    MakeDir(*data_ + "/sub");
    MakeDir(*data_ + "/noperm");
    WriteFile(*data_ + "/file.txt");
    WriteFile(*data_ + "/with space.txt");
    WriteFile(*data_ + "/%2e%2e");
    WriteFile(*data_ + "/sub/inner.txt");
    WriteFile(*data_ + "/noperm/hidden.txt");
    WriteFile(*data2_ + "/file.txt");
    WriteFile(*outside_ + "/secret.txt");
    MakeSymlink("sub/inner.txt", *data_ + "/link_in");
    MakeSymlink(*data_ + "/sub", *data_ + "/link_in_dir");
    MakeSymlink(*outside_ + "/secret.txt", *data_ + "/link_out");
    MakeSymlink(*outside_, *data_ + "/link_out_dir");
    MakeSymlink(*outside_ + "/new.txt", *data_ + "/dangling_out");
    MakeSymlink("loop", *data_ + "/loop");
    ASSERT_EQ(::chmod((*data_ + "/noperm").c_str(), 0), 0);
  }

  static void TearDownTestSuite() {
    if (tmp_ == nullptr) return;
    ::chmod((*data_ + "/noperm").c_str(), 0755);
    std::error_code ec;
    std::filesystem::remove_all(*tmp_, ec);
    for (std::string** p : {&tmp_, &data_, &data2_, &outside_}) {
      delete *p;
      *p = nullptr;
    }
  }

  void SetUp() override {
    absl::StatusOr<UriResolver> resolver = UriResolver::Create({*data_});
    ASSERT_TRUE(resolver.ok()) << resolver.status();
    resolver_.emplace(*std::move(resolver));
  }

  const UriResolver& resolver() const { return *resolver_; }
  static const std::string& tmp() { return *tmp_; }
  static const std::string& data() { return *data_; }
  static const std::string& data2() { return *data2_; }
  static const std::string& outside() { return *outside_; }
  static std::string FileUri(const std::string& path) {
    return "file://" + path;
  }

 private:
  static std::string* tmp_;
  static std::string* data_;
  static std::string* data2_;
  static std::string* outside_;
  std::optional<UriResolver> resolver_;
};

std::string* UriResolverTest::tmp_ = nullptr;
std::string* UriResolverTest::data_ = nullptr;
std::string* UriResolverTest::data2_ = nullptr;
std::string* UriResolverTest::outside_ = nullptr;

constexpr absl::StatusCode kDenied = absl::StatusCode::kPermissionDenied;
constexpr absl::StatusCode kInvalid = absl::StatusCode::kInvalidArgument;
constexpr absl::StatusCode kNotFound = absl::StatusCode::kNotFound;
constexpr absl::StatusCode kUnimplemented = absl::StatusCode::kUnimplemented;
constexpr absl::StatusCode kPrecondition =
    absl::StatusCode::kFailedPrecondition;
constexpr char kOutsideRoots[] = "outside the allowed roots";

// ---------------------------------------------------------------- UriScheme

TEST(UriSchemeTest, PlainPathsHaveNoScheme) {
  for (const char* path :
       {"", "/a/b", "a/b", "./s3://x", "C:\\x", "C:/x", "file:/x", "file:x",
        "s3:/bucket", "1abc://x", "://x", "-a://x", "a b://x", "%41://x"}) {
    EXPECT_EQ(UriScheme(path), "") << path;
  }
}

TEST(UriSchemeTest, RecognisesAndLowercasesSchemes) {
  EXPECT_EQ(UriScheme("file:///x"), "file");
  EXPECT_EQ(UriScheme("FILE:///x"), "file");
  EXPECT_EQ(UriScheme("S3://bucket/key"), "s3");
  EXPECT_EQ(UriScheme("gs://b/k"), "gs");
  EXPECT_EQ(UriScheme("hf://org/model"), "hf");
  EXPECT_EQ(UriScheme("https://example.com/x"), "https");
  EXPECT_EQ(UriScheme("a+b-c.d9://x"), "a+b-c.d9");
  EXPECT_EQ(UriScheme("C://x"), "c");
}

// ------------------------------------------------------------------- Create

TEST_F(UriResolverTest, CreateRejectsEmptyRootList) {
  EXPECT_TRUE(IsError(UriResolver::Create({}), kInvalid, {"at least one"}));
}

TEST_F(UriResolverTest, CreateRejectsEmptyRootString) {
  EXPECT_TRUE(IsError(UriResolver::Create({""}), kInvalid, {"empty"}));
}

TEST_F(UriResolverTest, CreateRejectsMissingRoot) {
  const std::string missing = tmp() + "/no_such_root";
  EXPECT_TRUE(IsError(UriResolver::Create({data(), missing}), kNotFound,
                      {missing, "No such file"}));
}

TEST_F(UriResolverTest, CreateRejectsFileRoot) {
  const std::string file = data() + "/file.txt";
  EXPECT_TRUE(IsError(UriResolver::Create({file}), kInvalid,
                      {file, "not a directory"}));
}

TEST_F(UriResolverTest, CreateCanonicalisesAndDeduplicatesRoots) {
  absl::StatusOr<UriResolver> resolver = UriResolver::Create(
      {data() + "/../data/", data(), data() + "/link_in_dir"});
  ASSERT_TRUE(resolver.ok()) << resolver.status();
  EXPECT_EQ(resolver->roots(),
            (std::vector<std::string>{data(), data() + "/sub"}));
}

// ---------------------------------------------------------- ResolveExisting

TEST_F(UriResolverTest, AcceptsPlainAbsolutePathInsideRoot) {
  absl::StatusOr<std::string> path =
      resolver().ResolveExisting(data() + "/sub/./inner.txt");
  ASSERT_TRUE(path.ok()) << path.status();
  EXPECT_EQ(*path, data() + "/sub/inner.txt");
}

TEST_F(UriResolverTest, RootItselfIsInside) {
  absl::StatusOr<std::string> path = resolver().ResolveExisting(data() + "/");
  ASSERT_TRUE(path.ok()) << path.status();
  EXPECT_EQ(*path, data());
}

TEST_F(UriResolverTest, AcceptsRelativePathAgainstWorkingDirectory) {
  char* old_cwd = ::getcwd(nullptr, 0);
  ASSERT_NE(old_cwd, nullptr);
  ASSERT_EQ(::chdir(tmp().c_str()), 0);
  absl::StatusOr<std::string> inside =
      resolver().ResolveExisting("data/file.txt");
  absl::StatusOr<std::string> outside =
      resolver().ResolveExisting("outside/secret.txt");
  ASSERT_EQ(::chdir(old_cwd), 0);
  ::free(old_cwd);
  ASSERT_TRUE(inside.ok()) << inside.status();
  EXPECT_EQ(*inside, data() + "/file.txt");
  EXPECT_TRUE(IsError(outside, kDenied, {"outside/secret.txt", kOutsideRoots}));
}

TEST_F(UriResolverTest, AcceptsFileUriWithEmptyHost) {
  absl::StatusOr<std::string> path =
      resolver().ResolveExisting(FileUri(data() + "/file.txt"));
  ASSERT_TRUE(path.ok()) << path.status();
  EXPECT_EQ(*path, data() + "/file.txt");
}

TEST_F(UriResolverTest, AcceptsFileUriWithLocalhost) {
  for (const char* prefix : {"file://localhost", "FILE://LocalHost"}) {
    absl::StatusOr<std::string> path =
        resolver().ResolveExisting(prefix + data() + "/file.txt");
    ASSERT_TRUE(path.ok()) << prefix << ": " << path.status();
    EXPECT_EQ(*path, data() + "/file.txt");
  }
}

TEST_F(UriResolverTest, PercentDecodesFileUri) {
  absl::StatusOr<std::string> path =
      resolver().ResolveExisting(FileUri(data() + "/with%20space.txt"));
  ASSERT_TRUE(path.ok()) << path.status();
  EXPECT_EQ(*path, data() + "/with space.txt");
  // An encoded '/' is a separator once decoded; the result is still checked.
  path = resolver().ResolveExisting(FileUri(data() + "%2Fsub%2finner.txt"));
  ASSERT_TRUE(path.ok()) << path.status();
  EXPECT_EQ(*path, data() + "/sub/inner.txt");
}

TEST_F(UriResolverTest, DoesNotPercentDecodePlainPaths) {
  absl::StatusOr<std::string> path =
      resolver().ResolveExisting(data() + "/%2e%2e");
  ASSERT_TRUE(path.ok()) << path.status();
  EXPECT_EQ(*path, data() + "/%2e%2e");
  EXPECT_TRUE(IsError(resolver().ResolveExisting(data() + "/with%20space.txt"),
                      kNotFound, {"with%20space.txt"}));
}

TEST_F(UriResolverTest, DeniesDotDotEscape) {
  const std::string uri = data() + "/../outside/secret.txt";
  EXPECT_TRUE(IsError(resolver().ResolveExisting(uri), kDenied,
                      {uri, outside() + "/secret.txt", kOutsideRoots, data()}));
  const std::string file_uri = FileUri(uri);
  EXPECT_TRUE(IsError(resolver().ResolveExisting(file_uri), kDenied,
                      {file_uri, outside() + "/secret.txt", kOutsideRoots}));
}

TEST_F(UriResolverTest, DeniesPercentEncodedDotDotEscape) {
  const std::string uri = FileUri(data() + "/%2e%2e/outside/secret.txt");
  EXPECT_TRUE(IsError(resolver().ResolveExisting(uri), kDenied,
                      {uri, outside() + "/secret.txt", kOutsideRoots, data()}));
}

TEST_F(UriResolverTest, DeniesPercentEncodedDotDotSlashEscape) {
  const std::string uri = FileUri(data() + "/%2E%2E%2Foutside%2Fsecret.txt");
  EXPECT_TRUE(IsError(resolver().ResolveExisting(uri), kDenied,
                      {uri, outside() + "/secret.txt", kOutsideRoots}));
}

TEST_F(UriResolverTest, DeniesSiblingWithRootAsPrefix) {
  const std::string uri = data2() + "/file.txt";
  EXPECT_TRUE(IsError(resolver().ResolveExisting(uri), kDenied,
                      {uri, kOutsideRoots, data()}));
  EXPECT_TRUE(IsError(resolver().ResolveExisting(data2()), kDenied,
                      {data2(), kOutsideRoots}));
  EXPECT_TRUE(IsError(resolver().ResolveExisting(FileUri(data() + "2")),
                      kDenied, {data2(), kOutsideRoots}));
}

TEST_F(UriResolverTest, DeniesSymlinkPointingOutside) {
  const std::string uri = data() + "/link_out";
  EXPECT_TRUE(IsError(resolver().ResolveExisting(uri), kDenied,
                      {uri, outside() + "/secret.txt", kOutsideRoots}));
  const std::string dir_uri = data() + "/link_out_dir/secret.txt";
  EXPECT_TRUE(IsError(resolver().ResolveExisting(dir_uri), kDenied,
                      {dir_uri, outside() + "/secret.txt", kOutsideRoots}));
}

TEST_F(UriResolverTest, AcceptsSymlinkPointingInside) {
  absl::StatusOr<std::string> path =
      resolver().ResolveExisting(data() + "/link_in");
  ASSERT_TRUE(path.ok()) << path.status();
  EXPECT_EQ(*path, data() + "/sub/inner.txt");
  path = resolver().ResolveExisting(FileUri(data() + "/link_in_dir/inner.txt"));
  ASSERT_TRUE(path.ok()) << path.status();
  EXPECT_EQ(*path, data() + "/sub/inner.txt");
}

TEST_F(UriResolverTest, RejectsUnsupportedSchemes) {
  for (const std::string uri : {"gs://bucket/key", "HTTP://example.com/x"}) {
    const std::string scheme = UriScheme(uri);
    EXPECT_TRUE(
        IsError(resolver().ResolveExisting(uri), kUnimplemented,
                {"unsupported scheme", "'" + scheme + "'", uri, "file://"}));
    EXPECT_TRUE(IsError(resolver().ResolveForWrite(uri), kUnimplemented,
                        {"unsupported scheme", uri}));
  }
}

// Issue #16 point 5: a remote URI is admitted only by a remote allowed root.
TEST_F(UriResolverTest, RemoteUriWithoutRemoteRootIsPermissionDenied) {
  for (const std::string uri :
       {"s3://bucket/key", "hf://org/model", "https://example.com/model.bin"}) {
    EXPECT_TRUE(IsError(resolver().ResolveExisting(uri), kDenied,
                        {"outside the allowed roots", uri}));
    EXPECT_TRUE(IsError(resolver().ResolveForWrite(uri), kDenied,
                        {"outside the allowed roots", uri}));
  }
}

TEST_F(UriResolverTest, RejectsFileUriWithRemoteHost) {
  const std::string uri = "file://example.com" + data() + "/file.txt";
  EXPECT_TRUE(IsError(resolver().ResolveExisting(uri), kInvalid,
                      {uri, "host", "example.com"}));
}

TEST_F(UriResolverTest, RejectsMalformedPercentEscapes) {
  for (const char* bad : {"/%zz", "/%4", "/%4g", "/x%", "/%%41", "/%g1"}) {
    const std::string uri = FileUri(data() + bad);
    EXPECT_TRUE(IsError(resolver().ResolveExisting(uri), kInvalid,
                        {"percent escape", uri}))
        << bad;
  }
}

TEST_F(UriResolverTest, RejectsEncodedNul) {
  const std::string uri = FileUri(data() + "/file.txt%00.png");
  EXPECT_TRUE(
      IsError(resolver().ResolveExisting(uri), kInvalid, {"NUL", "%00"}));
}

TEST_F(UriResolverTest, RejectsRawNul) {
  const std::string plain = data() + std::string("/file.txt\0.png", 14);
  EXPECT_TRUE(IsError(resolver().ResolveExisting(plain), kInvalid, {"NUL"}));
  EXPECT_TRUE(
      IsError(resolver().ResolveExisting(FileUri(plain)), kInvalid, {"NUL"}));
  EXPECT_TRUE(IsError(resolver().ResolveForWrite(plain), kInvalid, {"NUL"}));
  EXPECT_TRUE(IsError(resolver().CheckLocalPath(plain), kInvalid, {"NUL"}));
}

TEST_F(UriResolverTest, RejectsEmptyUriAndEmptyFileUriPath) {
  EXPECT_TRUE(IsError(resolver().ResolveExisting(""), kInvalid, {"empty"}));
  EXPECT_TRUE(IsError(resolver().ResolveForWrite(""), kInvalid, {"empty"}));
  EXPECT_TRUE(IsError(resolver().CheckLocalPath(""), kInvalid, {"empty"}));
  EXPECT_TRUE(
      IsError(resolver().ResolveExisting("file://"), kInvalid, {"empty path"}));
  EXPECT_TRUE(IsError(resolver().ResolveExisting("file://localhost"), kInvalid,
                      {"empty path"}));
}

TEST_F(UriResolverTest, RejectsQueryAndFragmentInFileUri) {
  for (const char* suffix : {"?version=2", "#frag", "?"}) {
    const std::string uri = FileUri(data() + "/file.txt" + suffix);
    EXPECT_TRUE(IsError(resolver().ResolveExisting(uri), kInvalid,
                        {uri, "query or fragment"}));
  }
  // Encoded, they are part of the name.
  EXPECT_TRUE(
      IsError(resolver().ResolveExisting(FileUri(data() + "/file.txt%3Fv=2")),
              kNotFound, {"file.txt?v=2"}));
  // In a plain path they are literal characters.
  EXPECT_TRUE(IsError(resolver().ResolveExisting(data() + "/file.txt?v=2"),
                      kNotFound, {"file.txt?v=2"}));
}

TEST_F(UriResolverTest, MissingFileInsideRootIsNotFound) {
  const std::string uri = data() + "/missing.bin";
  EXPECT_TRUE(IsError(resolver().ResolveExisting(uri), kNotFound,
                      {uri, "No such file"}));
  const std::string file_uri = FileUri(data() + "/missing%20file.bin");
  EXPECT_TRUE(IsError(resolver().ResolveExisting(file_uri), kNotFound,
                      {file_uri, data() + "/missing file.bin"}));
}

TEST_F(UriResolverTest, MissingFileOutsideRootIsDeniedNotNotFound) {
  // No existence oracle outside the roots.
  EXPECT_TRUE(IsError(resolver().ResolveExisting(outside() + "/missing"),
                      kDenied, {kOutsideRoots}));
  EXPECT_TRUE(IsError(resolver().ResolveExisting(data() + "/link_out_dir/nope"),
                      kDenied, {kOutsideRoots}));
  EXPECT_TRUE(IsError(resolver().ResolveExisting(outside() + "/secret.txt/x"),
                      kDenied, {kOutsideRoots}));
}

TEST_F(UriResolverTest, NotADirectoryIsFailedPrecondition) {
  const std::string uri = data() + "/file.txt/x";
  EXPECT_TRUE(IsError(resolver().ResolveExisting(uri), kPrecondition,
                      {uri, "Not a directory"}));
}

TEST_F(UriResolverTest, SymlinkLoopIsFailedPrecondition) {
  const std::string uri = data() + "/loop";
  EXPECT_TRUE(IsError(resolver().ResolveExisting(uri), kPrecondition,
                      {uri, "symbolic links"}));
}

// Runs `check` with directory permissions in force: as root (CI runs as
// root, which ignores them) it runs in a child process that drops to the
// unprivileged uid/gid 65534 first. Returns whether `check` held.
bool HoldsWithoutPrivileges(const std::string& tree,
                            const std::function<bool()>& check) {
  if (::geteuid() != 0) return check();
  // The unprivileged child must be able to walk the tree up to noperm/.
  for (std::string dir = tree; dir.size() > 1 && dir != "/tmp";
       dir = dir.substr(0, dir.rfind('/'))) {
    ::chmod(dir.c_str(), 0755);
  }
  pid_t pid = ::fork();
  if (pid < 0) return false;
  if (pid == 0) {
    if (::setgid(65534) != 0 || ::setuid(65534) != 0) ::_exit(2);
    ::_exit(check() ? 0 : 1);
  }
  int status = 0;
  if (::waitpid(pid, &status, 0) != pid) return false;
  return WIFEXITED(status) && WEXITSTATUS(status) == 0;
}

TEST_F(UriResolverTest, UnsearchableDirectoryIsPermissionDenied) {
  const std::string uri = data() + "/noperm/hidden.txt";
  EXPECT_TRUE(HoldsWithoutPrivileges(data(), [&] {
    return static_cast<bool>(IsError(resolver().ResolveExisting(uri), kDenied,
                                     {uri, "Permission denied"}));
  }));
}

TEST_F(UriResolverTest, SlashRootAllowsEverything) {
  absl::StatusOr<UriResolver> all = UriResolver::Create({"/"});
  ASSERT_TRUE(all.ok()) << all.status();
  EXPECT_EQ(all->roots(), std::vector<std::string>{"/"});
  for (const std::string& uri :
       {outside() + "/secret.txt", data() + "/link_out",
        FileUri(data() + "/%2e%2e/outside/secret.txt"),
        data2() + "/file.txt"}) {
    absl::StatusOr<std::string> path = all->ResolveExisting(uri);
    ASSERT_TRUE(path.ok()) << uri << ": " << path.status();
    EXPECT_EQ(path->substr(0, tmp().size()), tmp());
  }
  absl::StatusOr<std::string> root = all->ResolveExisting("file:///");
  ASSERT_TRUE(root.ok()) << root.status();
  EXPECT_EQ(*root, "/");
  absl::StatusOr<std::string> out = all->ResolveForWrite(outside() + "/new/x");
  ASSERT_TRUE(out.ok()) << out.status();
  EXPECT_EQ(*out, outside() + "/new/x");
}

TEST_F(UriResolverTest, MultipleRootsAreAllListed) {
  absl::StatusOr<UriResolver> two = UriResolver::Create({data(), outside()});
  ASSERT_TRUE(two.ok()) << two.status();
  absl::StatusOr<std::string> path = two->ResolveExisting(data() + "/link_out");
  ASSERT_TRUE(path.ok()) << path.status();
  EXPECT_EQ(*path, outside() + "/secret.txt");
  EXPECT_TRUE(
      IsError(two->ResolveExisting(data2() + "/file.txt"), kDenied,
              {kOutsideRoots, "'" + data() + "'", "'" + outside() + "'"}));
}

// ----------------------------------------------------------- CheckLocalPath

TEST_F(UriResolverTest, CheckLocalPathAcceptsInsideAndDeniesOutside) {
  absl::StatusOr<std::string> path =
      resolver().CheckLocalPath(data() + "/sub/../link_in");
  ASSERT_TRUE(path.ok()) << path.status();
  EXPECT_EQ(*path, data() + "/sub/inner.txt");
  EXPECT_TRUE(IsError(resolver().CheckLocalPath(data() + "/link_out"), kDenied,
                      {outside() + "/secret.txt", kOutsideRoots}));
  EXPECT_TRUE(IsError(resolver().CheckLocalPath(data() + "/nope"), kNotFound,
                      {data() + "/nope"}));
}

// ---------------------------------------------------------- ResolveForWrite

TEST_F(UriResolverTest, ForWriteAcceptsExistingFile) {
  absl::StatusOr<std::string> path =
      resolver().ResolveForWrite(data() + "/link_in");
  ASSERT_TRUE(path.ok()) << path.status();
  EXPECT_EQ(*path, data() + "/sub/inner.txt");
}

TEST_F(UriResolverTest, ForWriteAcceptsNewNestedNames) {
  absl::StatusOr<std::string> path =
      resolver().ResolveForWrite(data() + "/out/run 1/model.bin");
  ASSERT_TRUE(path.ok()) << path.status();
  EXPECT_EQ(*path, data() + "/out/run 1/model.bin");

  path = resolver().ResolveForWrite("file://localhost" + data() +
                                    "/out/run%201/model.bin");
  ASSERT_TRUE(path.ok()) << path.status();
  EXPECT_EQ(*path, data() + "/out/run 1/model.bin");

  path = resolver().ResolveForWrite(data() + "/sub/new.txt");
  ASSERT_TRUE(path.ok()) << path.status();
  EXPECT_EQ(*path, data() + "/sub/new.txt");
}

TEST_F(UriResolverTest, ForWriteNormalisesEmptyComponents) {
  absl::StatusOr<std::string> path =
      resolver().ResolveForWrite(data() + "//out//x.bin");
  ASSERT_TRUE(path.ok()) << path.status();
  EXPECT_EQ(*path, data() + "/out/x.bin");
  path = resolver().ResolveForWrite(data() + "/newdir/");
  ASSERT_TRUE(path.ok()) << path.status();
  EXPECT_EQ(*path, data() + "/newdir");
}

TEST_F(UriResolverTest, ForWriteResolvesExistingPrefixSymlinks) {
  absl::StatusOr<std::string> path =
      resolver().ResolveForWrite(data() + "/link_in_dir/new/x.bin");
  ASSERT_TRUE(path.ok()) << path.status();
  EXPECT_EQ(*path, data() + "/sub/new/x.bin");
  // '..' inside the existing prefix is resolved by realpath.
  path = resolver().ResolveForWrite(data() + "/sub/../new.bin");
  ASSERT_TRUE(path.ok()) << path.status();
  EXPECT_EQ(*path, data() + "/new.bin");
}

TEST_F(UriResolverTest, ForWriteDeniesDotDotAfterMissingComponent) {
  const std::string uri = data() + "/new/../../outside/x.bin";
  EXPECT_TRUE(
      IsError(resolver().ResolveForWrite(uri), kDenied, {uri, "'..'", data()}));
  // Harmless-looking, but still not a plain name.
  EXPECT_TRUE(IsError(resolver().ResolveForWrite(data() + "/new/../x.bin"),
                      kDenied, {"'..'"}));
  const std::string encoded = FileUri(data() + "/new/%2e%2e/%2E%2E/outside/x");
  EXPECT_TRUE(
      IsError(resolver().ResolveForWrite(encoded), kDenied, {encoded, "'..'"}));
}

TEST_F(UriResolverTest, ForWriteRejectsDotAfterMissingComponent) {
  EXPECT_TRUE(IsError(resolver().ResolveForWrite(data() + "/new/./x.bin"),
                      kInvalid, {"'.'"}));
}

TEST_F(UriResolverTest, ForWriteDeniesEscapes) {
  const std::string dotdot = data() + "/../outside/new.bin";
  EXPECT_TRUE(IsError(resolver().ResolveForWrite(dotdot), kDenied,
                      {dotdot, outside() + "/new.bin", kOutsideRoots}));
  const std::string encoded = FileUri(data() + "/%2E%2E%2Foutside%2Fnew.bin");
  EXPECT_TRUE(IsError(resolver().ResolveForWrite(encoded), kDenied,
                      {encoded, outside() + "/new.bin", kOutsideRoots}));
  const std::string sibling = data2() + "/new/x.bin";
  EXPECT_TRUE(IsError(resolver().ResolveForWrite(sibling), kDenied,
                      {sibling, kOutsideRoots}));
  const std::string via_link = data() + "/link_out_dir/new.bin";
  EXPECT_TRUE(IsError(resolver().ResolveForWrite(via_link), kDenied,
                      {via_link, outside() + "/new.bin", kOutsideRoots}));
}

TEST_F(UriResolverTest, ForWriteDeniesExistingSymlinkPointingOutside) {
  const std::string uri = data() + "/link_out";
  EXPECT_TRUE(IsError(resolver().ResolveForWrite(uri), kDenied,
                      {uri, outside() + "/secret.txt", kOutsideRoots}));
}

TEST_F(UriResolverTest, ForWriteRefusesDanglingSymlink) {
  // Pointing outside the roots: PERMISSION_DENIED (issue #10 point 21).
  const std::string uri = data() + "/dangling_out";
  EXPECT_TRUE(IsError(resolver().ResolveForWrite(uri), kDenied,
                      {uri, outside() + "/new.txt", kOutsideRoots}));
  // Pointing inside: still refused (never written through).
  const std::string in = data() + "/dangling_in_w";
  ASSERT_EQ(::symlink((data() + "/nowhere").c_str(), in.c_str()), 0);
  EXPECT_TRUE(IsError(resolver().ResolveForWrite(in), kPrecondition,
                      {in, "symbolic link"}));
  ::unlink(in.c_str());
  EXPECT_TRUE(IsError(resolver().ResolveForWrite(data() + "/loop"),
                      kPrecondition, {"symbolic link"}));
}

// Issue #10 point 21: a dangling symlink pointing outside the roots is
// PERMISSION_DENIED, not NOT_FOUND, whether or not its target exists; one
// pointing inside is NOT_FOUND.
TEST_F(UriResolverTest, DanglingSymlinkOutsideIsDeniedNotNotFound) {
  const std::string uri = data() + "/dangling_out";
  EXPECT_TRUE(IsError(resolver().ResolveExisting(uri), kDenied,
                      {uri, outside() + "/new.txt", kOutsideRoots}));
  EXPECT_TRUE(IsError(resolver().ResolveExisting(FileUri(uri)), kDenied,
                      {kOutsideRoots}));
  // Through a dangling directory link, with components after it.
  const std::string dir_link = data() + "/dangling_dir_out";
  ASSERT_EQ(::symlink((outside() + "/no_such_dir").c_str(), dir_link.c_str()),
            0);
  EXPECT_TRUE(IsError(resolver().ResolveExisting(dir_link + "/x/y"), kDenied,
                      {outside() + "/no_such_dir/x/y", kOutsideRoots}));
  // A relative target climbing out.
  const std::string rel = data() + "/dangling_rel_out";
  ASSERT_EQ(::symlink("../outside/nothing_here", rel.c_str()), 0);
  EXPECT_EQ(resolver().ResolveExisting(rel).status().code(), kDenied);
  EXPECT_EQ(resolver().CheckLocalPath(rel).status().code(), kDenied);
  const std::string in = data() + "/dangling_in";
  ASSERT_EQ(::symlink((data() + "/nowhere").c_str(), in.c_str()), 0);
  EXPECT_EQ(resolver().ResolveExisting(in).status().code(), kNotFound);
  for (const std::string& p : {dir_link, rel, in}) ::unlink(p.c_str());
}

TEST_F(UriResolverTest, ProtectedPathsAreCanonicalised) {
  auto r = UriResolver::Create(
      {data()}, {data() + "/sub/../sub", data() + "/not_yet/db"});
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(
      r->protected_paths(),
      std::vector<std::string>({data() + "/sub", data() + "/not_yet/db"}));
}

TEST_F(UriResolverTest, ForWriteUnderRegularFileIsFailedPrecondition) {
  EXPECT_TRUE(IsError(resolver().ResolveForWrite(data() + "/file.txt/new"),
                      kPrecondition, {"Not a directory"}));
}

TEST_F(UriResolverTest, ForWriteInUnsearchableDirectoryIsPermissionDenied) {
  EXPECT_TRUE(HoldsWithoutPrivileges(data(), [&] {
    return static_cast<bool>(
        IsError(resolver().ResolveForWrite(data() + "/noperm/new.bin"), kDenied,
                {"Permission denied"}));
  }));
}

TEST_F(UriResolverTest, ForWriteRejectsBadUris) {
  EXPECT_TRUE(IsError(resolver().ResolveForWrite(FileUri(data() + "/x%zz")),
                      kInvalid, {"percent escape"}));
  EXPECT_TRUE(IsError(resolver().ResolveForWrite(FileUri(data() + "/x#y")),
                      kInvalid, {"query or fragment"}));
  EXPECT_TRUE(IsError(resolver().ResolveForWrite("file://host" + data()),
                      kInvalid, {"host"}));
}

}  // namespace
}  // namespace tailor
