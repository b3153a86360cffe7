#include "fusion/calibration.h"

#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <limits>
#include <map>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "testing/test_util.h"

namespace tailor {
namespace {

using ::tailor::testing::BitEqual;
using ::tailor::testing::RawTensor;
using ::tailor::testing::SerializeSafetensors;
using ::tailor::testing::TempDir;
using ::tailor::testing::ToRaw;
using ::tailor::testing::WriteFileOrDie;

constexpr char kQ[] = "model.layers.0.self_attn.q_proj";
constexpr char kGate[] = "model.layers.0.mlp.gate_proj";
constexpr char kDown[] = "model.layers.0.mlp.down_proj";

// H = (2/n) X^T X for a random X [n, c]: symmetric up to rounding.
at::Tensor Hessian(int64_t c, int64_t n = 32) {
  const at::Tensor x = at::randn({n, c}, at::kDouble);
  return (x.t().mm(x) * (2.0 / n)).to(at::kFloat);
}

// A valid calibration file; each test breaks one thing.
struct CalibParts {
  CalibParts() {
    at::manual_seed(17);
    tensors = {ToRaw(std::string(kQ) + ".hessian", Hessian(6)),
               ToRaw(std::string(kGate) + ".hessian", Hessian(6)),
               ToRaw(std::string(kDown) + ".hessian", Hessian(10))};
  }
  std::map<std::string, std::string> metadata = {
      {"format", kHessianFormat},
      {"nsamples", "128"},
      {"aliases", R"({"model.layers.0.self_attn.k_proj.weight":)"
                  R"("model.layers.0.self_attn.q_proj.hessian",)"
                  R"("model.layers.0.self_attn.v_proj.weight":)"
                  R"("model.layers.0.self_attn.q_proj.hessian",)"
                  R"("model.layers.0.mlp.up_proj.weight":)"
                  R"("model.layers.0.mlp.gate_proj.hessian"})"}};
  std::vector<RawTensor> tensors;
};

class CalibrationTest : public ::testing::Test {
 protected:
  absl::StatusOr<std::unique_ptr<CalibrationFile>> Open(
      const CalibParts& parts) {
    WriteFileOrDie(path_, SerializeSafetensors(parts.tensors, parts.metadata));
    return CalibrationFile::Open(path_, {});
  }
  // Opens, then loads every key; returns the first error.
  absl::Status OpenAndLoadAll(const CalibParts& parts) {
    auto calib = Open(parts);
    if (!calib.ok()) return calib.status();
    for (const RawTensor& t : parts.tensors) {
      absl::Status s = (*calib)->Load(t.name).status();
      if (!s.ok()) return s;
    }
    return absl::OkStatus();
  }
  void ExpectRejected(const CalibParts& parts,
                      std::vector<absl::string_view> needles) {
    absl::Status s = OpenAndLoadAll(parts);
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
    EXPECT_TRUE(absl::StrContains(s.message(), path_)) << s;
    for (absl::string_view needle : needles) {
      EXPECT_TRUE(absl::StrContains(s.message(), needle))
          << "expected '" << needle << "' in: " << s;
    }
  }
  TempDir dir_;
  const std::string path_ = dir_.Join("calib.safetensors");
};

TEST_F(CalibrationTest, KeyForUsesAliasesThenTheWeightStem) {
  const CalibParts parts;
  auto calib = Open(parts);
  ASSERT_TRUE(calib.ok()) << calib.status();
  EXPECT_EQ((*calib)->nsamples(), 128);
  EXPECT_EQ((*calib)->aliases().size(), 3u);
  const std::string q_key = std::string(kQ) + ".hessian";
  EXPECT_EQ((*calib)->KeyFor(std::string(kQ) + ".weight"), q_key);
  EXPECT_EQ((*calib)->KeyFor("model.layers.0.self_attn.k_proj.weight"), q_key);
  EXPECT_EQ((*calib)->KeyFor("model.layers.0.self_attn.v_proj.weight"), q_key);
  EXPECT_EQ((*calib)->KeyFor("model.layers.0.mlp.up_proj.weight"),
            std::string(kGate) + ".hessian");
  EXPECT_EQ((*calib)->KeyFor(std::string(kDown) + ".weight"),
            std::string(kDown) + ".hessian");
  // No entry: no calibration.
  EXPECT_EQ((*calib)->KeyFor("model.layers.0.self_attn.o_proj.weight"),
            std::nullopt);
  EXPECT_EQ((*calib)->KeyFor("model.layers.1.mlp.down_proj.weight"),
            std::nullopt);
  // Not a ".weight" name: no calibration, even when the stem has one.
  EXPECT_EQ((*calib)->KeyFor(std::string(kQ) + ".bias"), std::nullopt);
  EXPECT_EQ((*calib)->KeyFor(kQ), std::nullopt);
  EXPECT_EQ((*calib)->KeyFor(""), std::nullopt);
}

TEST_F(CalibrationTest, AliasWinsOverTheStem) {
  CalibParts parts;
  parts.metadata["aliases"] = R"({"model.layers.0.mlp.down_proj.weight":)"
                              R"("model.layers.0.mlp.gate_proj.hessian"})";
  auto calib = Open(parts);
  ASSERT_TRUE(calib.ok()) << calib.status();
  EXPECT_EQ((*calib)->KeyFor(std::string(kDown) + ".weight"),
            std::string(kGate) + ".hessian");
}

TEST_F(CalibrationTest, AliasesAreOptional) {
  CalibParts parts;
  parts.metadata.erase("aliases");
  auto calib = Open(parts);
  ASSERT_TRUE(calib.ok()) << calib.status();
  EXPECT_TRUE((*calib)->aliases().empty());
  EXPECT_EQ((*calib)->KeyFor("model.layers.0.self_attn.k_proj.weight"),
            std::nullopt);
}

TEST_F(CalibrationTest, LoadReturnsTheStoredMatrix) {
  const CalibParts parts;
  auto calib = Open(parts);
  ASSERT_TRUE(calib.ok()) << calib.status();
  for (const RawTensor& t : parts.tensors) {
    auto h = (*calib)->Load(t.name);
    ASSERT_TRUE(h.ok()) << h.status();
    EXPECT_EQ(h->scalar_type(), at::kFloat);
    EXPECT_EQ(h->sizes().vec(), t.shape);
    EXPECT_EQ(
        std::string(static_cast<const char*>(h->data_ptr()), t.data.size()),
        t.data);
  }
  EXPECT_EQ(
      (*calib)->Load("model.layers.9.mlp.down_proj.hessian").status().code(),
      absl::StatusCode::kNotFound);
}

TEST_F(CalibrationTest, LargeMatrixIsCheckedAcrossBlocks) {
  at::manual_seed(2);
  at::Tensor h = Hessian(1100, 64);
  CalibParts parts;
  parts.metadata.erase("aliases");
  parts.tensors = {ToRaw("big.hessian", h)};
  ASSERT_TRUE(OpenAndLoadAll(parts).ok());
  // An asymmetric entry deep in the last block.
  at::Tensor bad = h.clone();
  bad[1099][3] += h.abs().max() * 1e-3;
  parts.tensors = {ToRaw("big.hessian", bad)};
  ExpectRejected(parts, {"'big.hessian'", "not symmetric"});
  bad = h.clone();
  bad[1050][2] = std::numeric_limits<float>::infinity();
  parts.tensors = {ToRaw("big.hessian", bad)};
  ExpectRejected(parts, {"'big.hessian'", "finite"});
}

TEST_F(CalibrationTest, SymmetryIsRelativeToTheLargestEntry) {
  at::Tensor h = at::eye(4, at::kFloat) * 1000;
  CalibParts parts;
  parts.metadata.erase("aliases");
  h[0][1] = 0.05f;  // 5e-5 * max|H|: within tolerance
  parts.tensors = {ToRaw("a.hessian", h)};
  EXPECT_TRUE(OpenAndLoadAll(parts).ok());
  h[0][1] = 0.5f;  // 5e-4 * max|H|: too much
  parts.tensors = {ToRaw("a.hessian", h)};
  ExpectRejected(parts, {"'a.hessian'", "not symmetric", "1e-4"});
  // All zero is symmetric; 0 x 0 is accepted.
  parts.tensors = {ToRaw("z.hessian", at::zeros({3, 3})),
                   ToRaw("e.hessian", at::zeros({0, 0}))};
  EXPECT_TRUE(OpenAndLoadAll(parts).ok());
}

TEST_F(CalibrationTest, RejectsWrongFormatTag) {
  CalibParts parts;
  parts.metadata["format"] = "tailor-patch/1";
  ExpectRejected(parts, {"format", "tailor-hessian/1"});
  parts.metadata.erase("format");
  ExpectRejected(parts, {"format", "missing"});
}

TEST_F(CalibrationTest, RejectsBadNsamples) {
  for (const char* bad : {"", "-1", "0", "1e3", "12abc", "+5", " 5", "5 ",
                          "0x10", "1.0", "99999999999999999999"}) {
    SCOPED_TRACE(bad);
    CalibParts parts;
    parts.metadata["nsamples"] = bad;
    ExpectRejected(parts, {"nsamples", "positive decimal integer"});
  }
  CalibParts parts;
  parts.metadata.erase("nsamples");
  ExpectRejected(parts, {"nsamples"});
  parts.metadata["nsamples"] = "9223372036854775807";
  auto calib = Open(parts);
  ASSERT_TRUE(calib.ok()) << calib.status();
  EXPECT_EQ((*calib)->nsamples(), std::numeric_limits<int64_t>::max());
}

TEST_F(CalibrationTest, RejectsBadAliases) {
  CalibParts parts;
  parts.metadata["aliases"] = R"({"model.layers.0.self_attn.k_proj.weight":)"
                              R"("model.layers.0.nope.hessian"})";
  ExpectRejected(parts, {"'model.layers.0.nope.hessian'", "does not hold"});
  parts.metadata["aliases"] = R"({"model.layers.0.self_attn.k_proj":)"
                              R"("model.layers.0.self_attn.q_proj.hessian"})";
  ExpectRejected(parts, {"alias source", "'.weight'"});
  parts.metadata["aliases"] = R"({"a.weight":3})";
  ExpectRejected(parts, {"'a.weight'", "string"});
  parts.metadata["aliases"] = R"(["a.weight"])";
  ExpectRejected(parts, {"aliases", "JSON object"});
  parts.metadata["aliases"] = "{oops";
  ExpectRejected(parts, {"aliases"});
}

TEST_F(CalibrationTest, RejectsNonF32) {
  CalibParts parts;
  parts.tensors.push_back(ToRaw("x.hessian", Hessian(3).to(at::kHalf)));
  ExpectRejected(parts, {"'x.hessian'", "F16", "must be F32"});
}

TEST_F(CalibrationTest, RejectsNonSquareOrNot2D) {
  CalibParts parts;
  parts.tensors.push_back(ToRaw("x.hessian", at::zeros({3, 4})));
  ExpectRejected(parts, {"'x.hessian'", "square"});
  parts.tensors.back() = ToRaw("x.hessian", at::zeros({9}));
  ExpectRejected(parts, {"'x.hessian'", "2-D"});
  parts.tensors.back() = ToRaw("x.hessian", at::zeros({2, 2, 2}));
  ExpectRejected(parts, {"'x.hessian'", "2-D"});
}

TEST_F(CalibrationTest, RejectsKeyWithoutHessianSuffix) {
  CalibParts parts;
  parts.tensors.push_back(
      ToRaw("model.layers.0.mlp.up_proj.weight", Hessian(3)));
  ExpectRejected(parts, {"'model.layers.0.mlp.up_proj.weight'", ".hessian"});
}

TEST_F(CalibrationTest, RejectsNaN) {
  CalibParts parts;
  at::Tensor h = Hessian(5);
  h[2][2] = std::numeric_limits<float>::quiet_NaN();
  parts.tensors.push_back(ToRaw("x.hessian", h));
  ExpectRejected(parts, {"'x.hessian'", "NaN", "finite"});
}

TEST_F(CalibrationTest, RejectsAsymmetric) {
  CalibParts parts;
  at::Tensor h = Hessian(5);
  h[0][4] += 1.0f;
  parts.tensors.push_back(ToRaw("x.hessian", h));
  ExpectRejected(parts, {"'x.hessian'", "not symmetric", "|H - H^T|"});
}

TEST_F(CalibrationTest, RejectsDirectoriesAndNonSafetensors) {
  EXPECT_EQ(CalibrationFile::Open(dir_.path(), {}).status().code(),
            absl::StatusCode::kInvalidArgument);
  WriteFileOrDie(path_, "nope");
  EXPECT_FALSE(CalibrationFile::Open(path_, {}).ok());
}

}  // namespace
}  // namespace tailor
