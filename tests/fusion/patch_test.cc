#include "fusion/patch.h"

#include <ATen/ATen.h>
#include <gtest/gtest.h>
#include <stdio.h>

#include <cmath>
#include <cstring>
#include <limits>
#include <map>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "io/checkpoint.h"
#include "testing/test_util.h"
#include "util/file_util.h"

namespace tailor {
namespace {

using ::tailor::testing::BitEqual;
using ::tailor::testing::RawTensor;
using ::tailor::testing::ReadFileOrDie;
using ::tailor::testing::SerializeSafetensors;
using ::tailor::testing::TempDir;
using ::tailor::testing::ToRaw;
using ::tailor::testing::WriteFileOrDie;

// The 3 x 4 mask used for the hand-written bytes:
//   row 0: 1 0 0 1   -> flat 0, 3
//   row 1: 0 1 1 0   -> flat 5, 6
//   row 2: 1 1 0 1   -> flat 8, 9, 11
// byte 0 = bits 0,3,5,6 = 0x69; byte 1 = bits 0,1,3 = 0x0b (pad bits 4..7 0).
at::Tensor HandMask() {
  return at::tensor({1, 0, 0, 1, 0, 1, 1, 0, 1, 1, 0, 1}, at::kInt)
      .to(at::kBool)
      .reshape({3, 4});
}
const char kHandMaskBytes[] = "\x69\x0b";

PatchMetadata TestMetadata() {
  PatchMetadata md;
  md.method = "tailor";
  md.knobs = {{"rho", 0.1}, {"omega", 0.5}, {"scope", "row"}};
  md.sources = nlohmann::json::array(
      {{{"role", "pretrained"}, {"uri", "file:///pre"}, {"sha256", "ab"}}});
  return md;
}

std::vector<std::string> ListOrDie(const std::string& dir) {
  auto names = ListDirectory(dir);
  EXPECT_TRUE(names.ok()) << names.status();
  return names.ok() ? *names : std::vector<std::string>{};
}

// Runs /usr/bin/sha256sum on `path`; returns the hex digest.
std::string Sha256Sum(const std::string& path) {
  FILE* pipe =
      ::popen(absl::StrCat("/usr/bin/sha256sum '", path, "'").c_str(), "r");
  if (pipe == nullptr) return "";
  char buffer[256] = {};
  std::string out;
  while (fgets(buffer, sizeof(buffer), pipe) != nullptr) out += buffer;
  ::pclose(pipe);
  return out.substr(0, out.find(' '));
}

// --- Bit packing -------------------------------------------------------------

TEST(PatchFormatTest, MaskIsPackedLsbFirstWithZeroPadBits) {
  TempDir dir;
  const std::string path = dir.Join("p.safetensors");
  const at::Tensor mask = HandMask();
  const at::Tensor delta =
      at::arange(1, 13, at::kFloat).reshape({3, 4}) * mask.to(at::kFloat);
  auto w = PatchWriter::Create(path);
  ASSERT_TRUE(w.ok()) << w.status();
  ASSERT_TRUE((*w)->Add("w", mask, delta, DType::kBF16, {}).ok());
  ASSERT_TRUE((*w)->Finish(TestMetadata()).ok());

  // Read with the plain checkpoint reader: the on-disk bytes themselves.
  auto ckpt = Checkpoint::Open(path);
  ASSERT_TRUE(ckpt.ok()) << ckpt.status();
  ASSERT_EQ((*ckpt)->tensors().size(), 2u);
  const TensorInfo* m = (*ckpt)->Find("w.mask");
  ASSERT_NE(m, nullptr);
  EXPECT_EQ(m->dtype, DType::kU8);
  EXPECT_EQ(m->shape, std::vector<int64_t>({2}));
  auto raw = (*ckpt)->ReadRaw("w.mask");
  ASSERT_TRUE(raw.ok());
  EXPECT_EQ(*raw, std::string(kHandMaskBytes, 2));

  const TensorInfo* v = (*ckpt)->Find("w.values");
  ASSERT_NE(v, nullptr);
  EXPECT_EQ(v->dtype, DType::kF32);
  EXPECT_EQ(v->shape, std::vector<int64_t>({7}));
  auto values = (*ckpt)->Read("w.values");
  ASSERT_TRUE(values.ok());
  EXPECT_TRUE(
      BitEqual(*values, at::tensor({1.f, 4.f, 6.f, 7.f, 9.f, 10.f, 12.f})));
}

TEST(PatchFormatTest, UnpacksHandWrittenBytes) {
  TempDir dir;
  const std::string path = dir.Join("p.safetensors");
  RawTensor mask{"w.mask", "U8", {2}, std::string(kHandMaskBytes, 2)};
  RawTensor values = ToRaw("w.values", at::arange(1, 8, at::kFloat));
  WriteFileOrDie(
      path,
      SerializeSafetensors(
          {values, mask},
          {{"format", kPatchFormat},
           {"method", "tailor"},
           {"knobs", "{}"},
           {"sources", "[]"},
           {"tensors", R"({"w":{"shape":[3,4],"dtype":"F16","kept":7}})"}}));
  auto patch = PatchFile::Open(path, {});
  ASSERT_TRUE(patch.ok()) << patch.status();
  ASSERT_EQ((*patch)->tensors().size(), 1u);
  EXPECT_EQ((*patch)->tensors()[0].base_dtype, DType::kF16);
  auto loaded = (*patch)->Load("w");
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  EXPECT_TRUE(BitEqual(loaded->mask, HandMask()));
  const at::Tensor expected =
      at::tensor({1.f, 0.f, 0.f, 2.f, 0.f, 3.f, 4.f, 0.f, 5.f, 6.f, 0.f, 7.f})
          .reshape({3, 4});
  EXPECT_TRUE(BitEqual(loaded->delta, expected));
}

// --- Fusion arithmetic -------------------------------------------------------

TEST(FuseTensorTest, AddsOnTheMaskAndLeavesEverythingElseBitExact) {
  const float nan = std::numeric_limits<float>::quiet_NaN();
  // -0.0 and NaN outside the mask must survive; -0.0 inside gets the value.
  const at::Tensor pre =
      at::tensor({-0.f, 1.f, -0.f, 2.5f, nan, -3.f}).reshape({2, 3});
  const at::Tensor mask =
      at::tensor({0, 1, 1, 0, 0, 1}, at::kInt).to(at::kBool).reshape({2, 3});
  const at::Tensor values = at::tensor({0.5f, 2.f, 1.f});
  const at::Tensor fused = FuseTensor(pre, mask, values);
  EXPECT_EQ(fused.scalar_type(), at::kFloat);
  EXPECT_EQ(fused.sizes(), pre.sizes());
  const float* f = fused.data_ptr<float>();
  EXPECT_EQ(f[0], 0.f);
  EXPECT_TRUE(std::signbit(f[0])) << "-0.0 outside the mask became +0.0";
  EXPECT_EQ(f[1], 1.5f);
  EXPECT_EQ(f[2], 2.f);
  EXPECT_EQ(f[3], 2.5f);
  EXPECT_TRUE(std::isnan(f[4]));
  EXPECT_EQ(f[5], -2.f);
  // The input is untouched.
  EXPECT_TRUE(std::signbit(pre.data_ptr<float>()[0]));
  EXPECT_EQ(pre.data_ptr<float>()[1], 1.f);
}

TEST(FuseTensorTest, LowPrecisionInputComputesInFloat32) {
  at::manual_seed(3);
  const at::Tensor pre = at::randn({16, 9}).to(at::kBFloat16);
  const at::Tensor mask = at::rand({16, 9}) < 0.3;
  const at::Tensor delta = at::randn({16, 9}) * mask.to(at::kFloat);
  const at::Tensor values = KeptValues(mask, delta);
  const at::Tensor fused = FuseTensor(pre, mask, values);
  const at::Tensor pre32 = pre.to(at::kFloat);
  const at::Tensor expected = at::where(mask, pre32 + delta, pre32);
  EXPECT_TRUE(BitEqual(fused, expected));
}

TEST(FuseTensorTest, KeptValuesAreRowMajorFloat32) {
  const at::Tensor mask = HandMask();
  const at::Tensor delta =
      at::arange(1, 13, at::kDouble).reshape({3, 4});  // float64 in
  const at::Tensor kept = KeptValues(mask, delta);
  EXPECT_TRUE(
      BitEqual(kept, at::tensor({1.f, 4.f, 6.f, 7.f, 9.f, 10.f, 12.f})));
  EXPECT_TRUE(BitEqual(KeptValues(at::zeros({5}, at::kBool), at::ones({5})),
                       at::empty({0}, at::kFloat)));
}

// --- Writer / reader ---------------------------------------------------------

struct Case {
  std::string name;
  at::Tensor mask;
  at::Tensor delta;
  DType dtype;
};

std::vector<Case> Cases() {
  at::manual_seed(11);
  std::vector<Case> cases;
  auto add = [&](const std::string& name, std::vector<int64_t> shape, double p,
                 DType dtype) {
    at::Tensor mask = at::rand(shape) < p;
    // +0.0 outside the mask (randn * 0 could give -0.0).
    at::Tensor delta = at::where(mask, at::randn(shape), at::zeros(shape));
    cases.push_back({name, mask, delta, dtype});
  };
  add("model.layers.0.mlp.down_proj.weight", {12, 8}, 0.3, DType::kBF16);
  add("model.layers.0.self_attn.q_proj.weight", {5, 7}, 0.5, DType::kF16);
  add("model.norm.weight", {17}, 0.6, DType::kF32);
  add("lm_head.weight", {3, 5, 7}, 0.2, DType::kBF16);
  add("all_false.weight", {4, 6}, 0.0, DType::kBF16);
  add("all_true.weight", {3, 3}, 1.1, DType::kF32);
  add("one.weight", {1}, 1.1, DType::kF32);
  add("empty.weight", {0, 4}, 0.5, DType::kF32);
  return cases;
}

TEST(PatchWriterTest, RoundTripRestoresMasksAndDeltas) {
  TempDir dir;
  const std::string path = dir.Join("patch.safetensors");
  const std::vector<Case> cases = Cases();
  {
    auto w = PatchWriter::Create(path);
    ASSERT_TRUE(w.ok()) << w.status();
    for (const Case& c : cases) {
      absl::Status s = (*w)->Add(c.name, c.mask, c.delta, c.dtype,
                                 {{"kept_fraction", 0.25}, {"name", c.name}});
      ASSERT_TRUE(s.ok()) << c.name << ": " << s;
    }
    absl::Status s = (*w)->Finish(TestMetadata());
    ASSERT_TRUE(s.ok()) << s;
  }
  auto patch = PatchFile::Open(path, {});
  ASSERT_TRUE(patch.ok()) << patch.status();
  EXPECT_EQ((*patch)->method(), "tailor");
  EXPECT_EQ((*patch)->knobs(), TestMetadata().knobs);
  EXPECT_EQ((*patch)->sources(), TestMetadata().sources);
  ASSERT_EQ((*patch)->tensors().size(), cases.size());
  for (size_t i = 1; i < (*patch)->tensors().size(); ++i) {
    EXPECT_LT((*patch)->tensors()[i - 1].name, (*patch)->tensors()[i].name);
  }
  for (const Case& c : cases) {
    SCOPED_TRACE(c.name);
    const PatchFile::TensorEntry* e = (*patch)->Find(c.name);
    ASSERT_NE(e, nullptr);
    EXPECT_EQ(e->shape, c.mask.sizes().vec());
    EXPECT_EQ(e->base_dtype, c.dtype);
    EXPECT_EQ(e->kept, c.mask.sum().item<int64_t>());
    EXPECT_EQ((*patch)->tensor_metadata()[c.name]["stats"]["name"], c.name);

    auto loaded = (*patch)->Load(c.name);
    ASSERT_TRUE(loaded.ok()) << loaded.status();
    EXPECT_TRUE(BitEqual(loaded->mask, c.mask));
    EXPECT_TRUE(BitEqual(loaded->delta, c.delta));

    auto packed = (*patch)->LoadPacked(c.name);
    ASSERT_TRUE(packed.ok()) << packed.status();
    EXPECT_TRUE(BitEqual(packed->first, c.mask));
    EXPECT_TRUE(BitEqual(packed->second, KeptValues(c.mask, c.delta)));
  }
  EXPECT_EQ((*patch)->Find("missing.weight"), nullptr);
  auto missing = (*patch)->Load("missing.weight");
  EXPECT_EQ(missing.status().code(), absl::StatusCode::kNotFound);
}

TEST(PatchWriterTest, ApplyingThePatchReproducesTheFusedTensor) {
  TempDir dir;
  const std::string path = dir.Join("patch.safetensors");
  at::manual_seed(5);
  const at::Tensor pre = at::randn({10, 6}).to(at::kBFloat16);
  const at::Tensor mask = at::rand({10, 6}) < 0.4;
  const at::Tensor delta =
      at::randn({10, 6}, at::kDouble) * mask.to(at::kDouble);
  const at::Tensor fused = FuseTensor(pre, mask, KeptValues(mask, delta));
  auto w = PatchWriter::Create(path);
  ASSERT_TRUE(w.ok());
  ASSERT_TRUE((*w)->Add("w", mask, delta, DType::kBF16, {}).ok());
  ASSERT_TRUE((*w)->Finish(TestMetadata()).ok());
  auto patch = PatchFile::Open(path, {});
  ASSERT_TRUE(patch.ok()) << patch.status();
  auto packed = (*patch)->LoadPacked("w");
  ASSERT_TRUE(packed.ok());
  EXPECT_TRUE(BitEqual(FuseTensor(pre, packed->first, packed->second), fused));
}

TEST(PatchWriterTest, OutputIsDeterministicAndAligned) {
  TempDir dir;
  const std::vector<Case> cases = Cases();
  std::vector<std::string> bytes;
  for (const char* name : {"a.safetensors", "b.safetensors"}) {
    auto w = PatchWriter::Create(dir.Join(name));
    ASSERT_TRUE(w.ok());
    for (const Case& c : cases) {
      ASSERT_TRUE(
          (*w)->Add(c.name, c.mask, c.delta, c.dtype, {{"z", 1}, {"a", 2}})
              .ok());
    }
    ASSERT_TRUE((*w)->Finish(TestMetadata()).ok());
    bytes.push_back(ReadFileOrDie(dir.Join(name)));
  }
  EXPECT_EQ(bytes[0], bytes[1]);

  auto ckpt = Checkpoint::Open(dir.Join("a.safetensors"));
  ASSERT_TRUE(ckpt.ok());
  const SafetensorsHeader& h = (*ckpt)->files()[0]->header();
  EXPECT_EQ(h.data_offset() % 8, 0u);
  // Values (F32) come before every mask (U8), so each is 4-byte aligned.
  uint64_t last_values_end = 0;
  uint64_t first_mask_begin = h.data_size;
  for (const TensorEntry& e : h.tensors) {
    if (e.dtype == DType::kF32) {
      EXPECT_EQ(e.begin % 4, 0u) << e.name;
      last_values_end = std::max(last_values_end, e.end);
    } else {
      first_mask_begin = std::min(first_mask_begin, e.begin);
    }
  }
  EXPECT_LE(last_values_end, first_mask_begin);
  // The metadata is first in the header.
  EXPECT_EQ(bytes[0].substr(8, 16), "{\"__metadata__\":");
}

TEST(PatchWriterTest, NothingAppearsBeforeFinishAndNoSpoolIsLeft) {
  TempDir dir;
  const std::string path = dir.Join("patch.safetensors");
  const at::Tensor mask = HandMask();
  const at::Tensor delta = at::ones({3, 4});
  {
    auto w = PatchWriter::Create(path);
    ASSERT_TRUE(w.ok());
    ASSERT_TRUE((*w)->Add("w", mask, delta, DType::kF32, {}).ok());
    EXPECT_FALSE(PathExists(path));
    // The spool and the staged file are hidden, in the same directory.
    std::vector<std::string> names = ListOrDie(dir.path());
    ASSERT_EQ(names.size(), 2u);
    EXPECT_TRUE(absl::StartsWith(names[0], ".patch.safetensors.tailor-spool-"))
        << names[0];
    EXPECT_TRUE(absl::StartsWith(names[1], ".patch.safetensors.tailor-stage-"))
        << names[1];
    // Destroyed without Finish.
  }
  EXPECT_TRUE(ListOrDie(dir.path()).empty());

  {
    auto w = PatchWriter::Create(path);
    ASSERT_TRUE(w.ok());
    ASSERT_TRUE((*w)->Add("w", mask, delta, DType::kF32, {}).ok());
    ASSERT_TRUE((*w)->Finish(TestMetadata()).ok());
    EXPECT_EQ(ListOrDie(dir.path()),
              std::vector<std::string>({"patch.safetensors"}));
    EXPECT_EQ((*w)->Finish(TestMetadata()).code(),
              absl::StatusCode::kFailedPrecondition);
    EXPECT_EQ((*w)->Add("v", mask, delta, DType::kF32, {}).code(),
              absl::StatusCode::kFailedPrecondition);
  }
  EXPECT_EQ(ListOrDie(dir.path()),
            std::vector<std::string>({"patch.safetensors"}));
}

TEST(PatchWriterTest, FinishReplacesAnExistingFile) {
  TempDir dir;
  const std::string path = dir.Join("patch.safetensors");
  WriteFileOrDie(path, "old");
  auto w = PatchWriter::Create(path);
  ASSERT_TRUE(w.ok());
  ASSERT_TRUE((*w)->Finish(TestMetadata()).ok());
  auto patch = PatchFile::Open(path, {});
  ASSERT_TRUE(patch.ok()) << patch.status();
  EXPECT_TRUE((*patch)->tensors().empty());
}

TEST(PatchWriterTest, RejectsBadInput) {
  TempDir dir;
  auto w = PatchWriter::Create(dir.Join("patch.safetensors"));
  ASSERT_TRUE(w.ok());
  const at::Tensor mask = HandMask();
  const at::Tensor delta = at::ones({3, 4});
  ASSERT_TRUE((*w)->Add("w", mask, delta, DType::kF32, {}).ok());
  absl::Status twice = (*w)->Add("w", mask, delta, DType::kF32, {});
  EXPECT_EQ(twice.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(absl::StrContains(twice.message(), "added twice")) << twice;

  absl::Status not_bool =
      (*w)->Add("x", mask.to(at::kFloat), delta, DType::kF32, {});
  EXPECT_TRUE(absl::StrContains(not_bool.message(), "bool")) << not_bool;
  absl::Status shape = (*w)->Add("y", mask, at::ones({4, 3}), DType::kF32, {});
  EXPECT_TRUE(absl::StrContains(shape.message(), "shaped like")) << shape;
  EXPECT_FALSE((*w)->Add("", mask, delta, DType::kF32, {}).ok());

  PatchMetadata bad = TestMetadata();
  bad.knobs = nlohmann::json::array();
  EXPECT_EQ((*w)->Finish(bad).code(), absl::StatusCode::kInvalidArgument);
  // The failed calls left the writer usable.
  ASSERT_TRUE((*w)->Finish(TestMetadata()).ok());
  auto patch = PatchFile::Open(dir.Join("patch.safetensors"), {});
  ASSERT_TRUE(patch.ok()) << patch.status();
  EXPECT_EQ((*patch)->tensors().size(), 1u);

  EXPECT_EQ(PatchWriter::Create(dir.Join("no/such/dir/p.safetensors"))
                .status()
                .code(),
            absl::StatusCode::kNotFound);
}

// --- Malformed patches -------------------------------------------------------

// A valid hand-built patch ("w", 3 x 4, the hand mask, 7 values); each test
// breaks one thing.
struct PatchParts {
  std::map<std::string, std::string> metadata = {
      {"format", kPatchFormat},
      {"method", "tailor"},
      {"knobs", "{}"},
      {"sources", "[]"},
      {"tensors", R"({"w":{"shape":[3,4],"dtype":"BF16","kept":7}})"}};
  std::vector<RawTensor> tensors = {
      ToRaw("w.values", at::arange(1, 8, at::kFloat)),
      RawTensor{"w.mask", "U8", {2}, std::string(kHandMaskBytes, 2)}};
};

class PatchMalformedTest : public ::testing::Test {
 protected:
  // Opens the patch, then loads "w"; returns the first error.
  absl::Status OpenAndLoad(const PatchParts& parts) {
    WriteFileOrDie(path_, SerializeSafetensors(parts.tensors, parts.metadata));
    auto patch = PatchFile::Open(path_, {});
    if (!patch.ok()) return patch.status();
    return (*patch)->Load("w").status();
  }
  void ExpectRejected(const PatchParts& parts, absl::string_view needle) {
    absl::Status s = OpenAndLoad(parts);
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
    EXPECT_TRUE(absl::StrContains(s.message(), needle))
        << "expected '" << needle << "' in: " << s;
    EXPECT_TRUE(absl::StrContains(s.message(), path_)) << s;
  }
  TempDir dir_;
  const std::string path_ = dir_.Join("bad.safetensors");
};

TEST_F(PatchMalformedTest, ValidBaselineLoads) {
  EXPECT_TRUE(OpenAndLoad(PatchParts()).ok());
}

TEST_F(PatchMalformedTest, WrongOrMissingFormatTag) {
  PatchParts p;
  p.metadata["format"] = "tailor-hessian/1";
  ExpectRejected(p, "not a tailor patch");
  p.metadata.erase("format");
  ExpectRejected(p, "not a tailor patch");
  // A plain checkpoint is not a patch either.
  WriteFileOrDie(path_, SerializeSafetensors({ToRaw("w", at::ones({2}))}));
  auto s = PatchFile::Open(path_, {}).status();
  EXPECT_TRUE(absl::StrContains(s.message(), "not a tailor patch")) << s;
}

TEST_F(PatchMalformedTest, MissingValuesOrMask) {
  PatchParts p;
  p.tensors.erase(p.tensors.begin());  // drop w.values
  ExpectRejected(p, "'w.mask' has no matching 'w.values'");
  PatchParts q;
  q.tensors.pop_back();  // drop w.mask
  ExpectRejected(q, "'w.values' has no matching 'w.mask'");
}

TEST_F(PatchMalformedTest, MaskLengthWrong) {
  PatchParts p;
  p.tensors[1] = RawTensor{"w.mask", "U8", {3}, std::string("\x69\x0b\x00", 3)};
  ExpectRejected(p, "needs ceil(12 / 8) = 2");
}

TEST_F(PatchMalformedTest, PopcountDiffersFromKept) {
  PatchParts p;
  p.tensors[1].data = std::string("\x69\x03", 2);  // 6 bits set, 7 values
  ExpectRejected(p, "popcount must equal kept");
}

TEST_F(PatchMalformedTest, PadBitsSet) {
  PatchParts p;
  p.tensors[1].data = std::string("\x69\x1b", 2);  // bit 12 is padding
  ExpectRejected(p, "pad bits");
}

TEST_F(PatchMalformedTest, UnknownExtraTensor) {
  PatchParts p;
  p.tensors.push_back(ToRaw("w.bias", at::ones({2})));
  ExpectRejected(p, "unexpected tensor 'w.bias'");
}

TEST_F(PatchMalformedTest, WrongDtypes) {
  PatchParts p;
  p.tensors[0] = ToRaw("w.values", at::arange(1, 8, at::kFloat).to(at::kHalf));
  ExpectRejected(p, "must be F32 1-D");
  PatchParts q;
  q.tensors[1].dtype = "I8";
  ExpectRejected(q, "must be U8 1-D");
}

TEST_F(PatchMalformedTest, BadMetadataJson) {
  PatchParts p;
  p.metadata["knobs"] = "{not json";
  ExpectRejected(p, "knobs");
  p = PatchParts();
  p.metadata["sources"] = "{}";
  ExpectRejected(p, "'sources' must be a JSON array");
  p = PatchParts();
  p.metadata["tensors"] =
      R"({"w":{"shape":[3,4],"dtype":"BF16","kept":7},"w":{}})";
  ExpectRejected(p, "tensors");
  p = PatchParts();
  p.metadata.erase("method");
  ExpectRejected(p, "lacks 'method'");
}

TEST_F(PatchMalformedTest, TensorMetadataInconsistent) {
  PatchParts p;
  p.metadata["tensors"] = "{}";
  ExpectRejected(p, "no object for 'w'");
  p.metadata["tensors"] =
      R"({"w":{"shape":[3,4],"dtype":"BF16","kept":7},"v":{}})";
  ExpectRejected(p, "lists 'v'");
  p.metadata["tensors"] = R"({"w":{"shape":[3,4],"dtype":"F33","kept":7}})";
  ExpectRejected(p, "dtype");
  p.metadata["tensors"] = R"({"w":{"shape":[-3,4],"dtype":"BF16","kept":7}})";
  ExpectRejected(p, "non-negative integers");
  p.metadata["tensors"] = R"({"w":{"shape":[3,4],"dtype":"BF16","kept":6}})";
  ExpectRejected(p, "kept is 6");
  p.metadata["tensors"] = R"({"w":{"shape":[3,4],"dtype":"BF16"}})";
  ExpectRejected(p, "kept must be");
  p.metadata["tensors"] = R"({"w":{"shape":[5,4],"dtype":"BF16","kept":7}})";
  ExpectRejected(p, "needs ceil(20 / 8) = 3");
}

TEST_F(PatchMalformedTest, NotASafetensorsFile) {
  WriteFileOrDie(path_, "definitely not safetensors");
  EXPECT_FALSE(PatchFile::Open(path_, {}).ok());
  EXPECT_EQ(PatchFile::Open(dir_.path(), {}).status().code(),
            absl::StatusCode::kInvalidArgument);
}

// --- Fingerprint -------------------------------------------------------------

TEST(PatchHeaderFingerprintTest, MatchesSha256OfTheHeaderBytes) {
  TempDir dir;
  const std::string path = dir.Join("m.safetensors");
  const std::string bytes = SerializeSafetensors(
      {ToRaw("a", at::arange(6, at::kFloat))}, {{"format", "pt"}});
  WriteFileOrDie(path, bytes);
  uint64_t n = 0;
  for (int i = 0; i < 8; ++i) {
    n |= static_cast<uint64_t>(static_cast<uint8_t>(bytes[i])) << (8 * i);
  }
  WriteFileOrDie(dir.Join("header.bin"), bytes.substr(0, 8 + n));
  const std::string expected = Sha256Sum(dir.Join("header.bin"));
  ASSERT_EQ(expected.size(), 64u);

  auto fp = HeaderFingerprint(path);
  ASSERT_TRUE(fp.ok()) << fp.status();
  EXPECT_EQ(*fp, expected);

  // Same header, other data: same fingerprint.
  WriteFileOrDie(
      path, SerializeSafetensors({ToRaw("a", at::arange(6, at::kFloat) + 1)},
                                 {{"format", "pt"}}));
  auto same = HeaderFingerprint(path);
  ASSERT_TRUE(same.ok());
  EXPECT_EQ(*same, expected);

  // Another header: another fingerprint.
  WriteFileOrDie(path,
                 SerializeSafetensors({ToRaw("b", at::arange(6, at::kFloat))},
                                      {{"format", "pt"}}));
  auto other = HeaderFingerprint(path);
  ASSERT_TRUE(other.ok());
  EXPECT_NE(*other, expected);
}

TEST(PatchHeaderFingerprintTest, KnownVector) {
  // An empty safetensors file: length 8, header "{}      " (no tensors).
  // sha256 of those 16 bytes (printf ... | sha256sum).
  TempDir dir;
  const std::string path = dir.Join("empty.safetensors");
  WriteFileOrDie(path, std::string("\x08\0\0\0\0\0\0\0{}      ", 16));
  auto fp = HeaderFingerprint(path);
  ASSERT_TRUE(fp.ok()) << fp.status();
  EXPECT_EQ(*fp,
            "9bbcbf73561f6bc5d0a17ea6a2081feed2d1304e87602d8c502d9a5c4bd85576");
}

TEST(PatchHeaderFingerprintTest, RejectsInvalidFiles) {
  TempDir dir;
  WriteFileOrDie(dir.Join("x.safetensors"), "junk");
  EXPECT_FALSE(HeaderFingerprint(dir.Join("x.safetensors")).ok());
  EXPECT_EQ(HeaderFingerprint(dir.Join("missing.safetensors")).status().code(),
            absl::StatusCode::kNotFound);
}

}  // namespace
}  // namespace tailor
