// `tailorctl inspect` on a remote checkpoint (issue #16 point 9): only the
// headers are read. Through RunInspect with the in-memory store.

#include <ATen/ATen.h>
#include <gtest/gtest.h>
#include <sys/stat.h>

#include <sstream>

#include "absl/strings/match.h"
#include "client/inspect_command.h"
#include "client/remote_flags.h"
#include "testing/memory_object_store.h"
#include "testing/test_util.h"

namespace tailor {
namespace {

using ::tailor::testing::MemoryObjectStore;
using ::tailor::testing::MemoryStoreProvider;
using ::tailor::testing::TempDir;
using ::tailor::testing::ToRaw;
using ::tailor::testing::WriteShardedCheckpoint;

TEST(InspectRemoteTest, ReadsOnlyTheHeaders) {
  TempDir tmp;
  const std::string local = tmp.Join("m");
  ::mkdir(local.c_str(), 0755);
  // Two shards of 4 MiB of tensor data each.
  WriteShardedCheckpoint(local, {{ToRaw("a", at::randn({1 << 20}))},
                                 {ToRaw("b", at::randn({1 << 20}))}});
  auto store = std::make_shared<MemoryObjectStore>();
  store->PutTree(local, "s3://bkt/models/m/");
  UriResolver::Remote remote;
  remote.provider = std::make_shared<MemoryStoreProvider>(store);
  UriResolver resolver =
      UriResolver::Create({"s3://bkt/models/"}, {}, remote).value();
  store->ResetCounters();
  cli::InspectArgs args;
  args.uri = "s3://bkt/models/m";
  args.output = "json";
  std::ostringstream out;
  absl::Status s = cli::RunInspect(args, resolver, out);
  ASSERT_TRUE(s.ok()) << s;
  EXPECT_TRUE(absl::StrContains(out.str(), "\"tensors\": 2")) << out.str();
  const uint64_t total = 2 * (4u << 20);
  EXPECT_LT(store->bytes_served(), total / 16)
      << "inspect read " << store->bytes_served() << " of " << total
      << " bytes: not ranged";
}

TEST(InspectRemoteTest, WithoutAProviderRemoteIsNotConfigured) {
  cli::InspectArgs args;
  args.uri = "s3://bkt/models/m";
  args.allowed_roots = {"s3://bkt/models/"};
  std::ostringstream out;
  // A resolver with a remote root but no provider (the binaries always
  // have one: MakeObjectStoreProvider).
  UriResolver resolver =
      UriResolver::Create({"s3://bkt/models/"}, {}, UriResolver::Remote())
          .value();
  absl::Status s = cli::RunInspect(args, resolver, out);
  EXPECT_EQ(s.code(), absl::StatusCode::kUnimplemented) << s;
  EXPECT_TRUE(absl::StrContains(s.message(), "remote storage not configured"))
      << s;
  // A root elsewhere: PERMISSION_DENIED before any store is asked.
  args.allowed_roots = {"s3://bkt/other/"};
  EXPECT_EQ(cli::RunInspect(args, out).code(),
            absl::StatusCode::kPermissionDenied);
}

}  // namespace
}  // namespace tailor
