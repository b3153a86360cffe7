#include "io/open_checkpoint.h"

#include <ATen/ATen.h>
#include <gtest/gtest.h>
#include <sys/stat.h>

#include "absl/strings/match.h"
#include "testing/test_util.h"

namespace tailor {
namespace {

using ::tailor::testing::BitEqual;
using ::tailor::testing::SerializeSafetensors;
using ::tailor::testing::TempDir;
using ::tailor::testing::ToRaw;
using ::tailor::testing::WriteFileOrDie;

TEST(OpenCheckpointTest, ResolvesUrisThroughTheRoots) {
  TempDir dir;
  const std::string root = dir.Join("root");
  ASSERT_EQ(::mkdir(root.c_str(), 0755), 0);
  at::Tensor w = at::randn({3, 3});
  WriteFileOrDie(root + "/model.safetensors",
                 SerializeSafetensors({ToRaw("w", w)}));
  WriteFileOrDie(dir.Join("model.safetensors"),
                 SerializeSafetensors({ToRaw("w", w)}));
  auto resolver = UriResolver::Create({root});
  ASSERT_TRUE(resolver.ok());

  auto ok = OpenCheckpointUri("file://" + root, *resolver);
  ASSERT_TRUE(ok.ok()) << ok.status();
  EXPECT_TRUE(BitEqual(*(*ok)->Read("w"), w));

  auto escaped = OpenCheckpointUri(root + "/../model.safetensors", *resolver);
  EXPECT_EQ(escaped.status().code(), absl::StatusCode::kPermissionDenied);
  auto encoded = OpenCheckpointUri(
      "file://" + root + "/%2e%2e/model.safetensors", *resolver);
  EXPECT_EQ(encoded.status().code(), absl::StatusCode::kPermissionDenied);
  // A remote URI needs a remote allowed root (issue #16 point 5).
  auto scheme = OpenCheckpointUri("hf://meta-llama/Llama-2-7b", *resolver);
  EXPECT_EQ(scheme.status().code(), absl::StatusCode::kPermissionDenied);
  auto gs = OpenCheckpointUri("gs://bucket/model", *resolver);
  EXPECT_EQ(gs.status().code(), absl::StatusCode::kUnimplemented);
}

TEST(OpenCheckpointTest, FineTunedIsFullCheckpointOrAdapter) {
  TempDir dir;
  const std::string base_dir = dir.Join("base");
  const std::string ft_dir = dir.Join("ft");
  const std::string lora_dir = dir.Join("lora");
  for (const auto& d : {base_dir, ft_dir, lora_dir}) ::mkdir(d.c_str(), 0755);
  at::Tensor w = at::randn({4, 3});
  WriteFileOrDie(base_dir + "/model.safetensors",
                 SerializeSafetensors({ToRaw("m.proj.weight", w)}));
  WriteFileOrDie(ft_dir + "/model.safetensors",
                 SerializeSafetensors({ToRaw("m.proj.weight", w + 1)}));
  at::Tensor a = at::randn({2, 3});
  at::Tensor b = at::randn({4, 2});
  WriteFileOrDie(lora_dir + "/adapter_config.json",
                 R"({"peft_type": "LORA", "r": 2, "lora_alpha": 8})");
  WriteFileOrDie(lora_dir + "/adapter_model.safetensors",
                 SerializeSafetensors(
                     {ToRaw("base_model.model.m.proj.lora_A.weight", a),
                      ToRaw("base_model.model.m.proj.lora_B.weight", b)}));
  auto resolver = UriResolver::Create({dir.path()});
  ASSERT_TRUE(resolver.ok());
  auto base = OpenCheckpointUri(base_dir, *resolver);
  ASSERT_TRUE(base.ok()) << base.status();

  auto full = OpenFineTunedUri(ft_dir, **base, *resolver);
  ASSERT_TRUE(full.ok()) << full.status();
  EXPECT_TRUE(BitEqual(*(*full)->Read("m.proj.weight"), w + 1));

  auto lora = OpenFineTunedUri(lora_dir, **base, *resolver);
  ASSERT_TRUE(lora.ok()) << lora.status();
  at::Tensor expected = (w.to(at::kDouble) +
                         4.0 * at::matmul(b.to(at::kDouble), a.to(at::kDouble)))
                            .to(at::kFloat);
  auto merged = (*lora)->Read("m.proj.weight");
  ASSERT_TRUE(merged.ok()) << merged.status();
  EXPECT_TRUE(at::allclose(*merged, expected, 1e-5, 1e-5));

  // An adapter is not a base.
  auto as_base = OpenCheckpointUri(lora_dir, *resolver);
  EXPECT_EQ(as_base.status().code(), absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace tailor
