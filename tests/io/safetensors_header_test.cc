#include "io/safetensors_header.h"

#include <gtest/gtest.h>

#include <cstdint>
#include <string>

#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "io/dtype.h"
#include "io/safetensors_file.h"
#include "testing/test_util.h"

namespace tailor {
namespace {

using ::tailor::testing::AssembleSafetensors;
using ::tailor::testing::TempDir;
using ::tailor::testing::WriteFileOrDie;

constexpr absl::string_view kLabel = "mem.safetensors";

std::string LengthPrefix(uint64_t n) {
  std::string out(8, '\0');
  for (int i = 0; i < 8; ++i) out[i] = static_cast<char>((n >> (8 * i)) & 0xff);
  return out;
}

std::string Data(size_t n) { return std::string(n, '\0'); }

TEST(ParseSafetensorsBytesTest, EntriesAreSortedByNameWhateverTheLayout) {
  // Written (and laid out) in the order c, a, b.
  const std::string bytes = AssembleSafetensors(
      R"({"c":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
      R"("a":{"dtype":"I64","shape":[1],"data_offsets":[8,16]},)"
      R"("b":{"dtype":"U8","shape":[3],"data_offsets":[16,19]}})",
      Data(19));
  absl::StatusOr<SafetensorsHeader> h = ParseSafetensorsBytes(bytes, kLabel);
  ASSERT_TRUE(h.ok()) << h.status();
  ASSERT_EQ(h->tensors.size(), 3u);
  EXPECT_EQ(h->tensors[0].name, "a");
  EXPECT_EQ(h->tensors[1].name, "b");
  EXPECT_EQ(h->tensors[2].name, "c");
  EXPECT_EQ(h->tensors[0].begin, 8u);
  EXPECT_EQ(h->tensors[0].end, 16u);
  EXPECT_EQ(h->tensors[2].begin, 0u);
  EXPECT_EQ(h->data_size, 19u);
}

TEST(ParseSafetensorsBytesTest, FindUsesTheSortedOrder) {
  const std::string bytes = AssembleSafetensors(
      R"({"model.layers.10.w":)"
      R"({"dtype":"F16","shape":[1],"data_offsets":[0,2]},)"
      R"("model.layers.2.w":{"dtype":"F16","shape":[1],"data_offsets":[2,4]},)"
      R"("lm_head":{"dtype":"F16","shape":[1],"data_offsets":[4,6]}})",
      Data(6));
  absl::StatusOr<SafetensorsHeader> h = ParseSafetensorsBytes(bytes, kLabel);
  ASSERT_TRUE(h.ok()) << h.status();
  for (const char* name :
       {"model.layers.10.w", "model.layers.2.w", "lm_head"}) {
    const TensorEntry* e = h->Find(name);
    ASSERT_NE(e, nullptr) << name;
    EXPECT_EQ(e->name, name);
  }
  EXPECT_EQ(h->Find("model.layers.2.w")->begin, 2u);
  EXPECT_EQ(h->Find("model"), nullptr);
  EXPECT_EQ(h->Find("model.layers.2.w2"), nullptr);
  EXPECT_EQ(h->Find(""), nullptr);
  EXPECT_EQ(h->Find("zzz"), nullptr);
}

TEST(ParseSafetensorsBytesTest, NumelAndNbytesPerDtype) {
  const std::string bytes = AssembleSafetensors(
      R"({"bf":{"dtype":"BF16","shape":[2,3],"data_offsets":[0,12]},)"
      R"("d":{"dtype":"F64","shape":[2,1,2],"data_offsets":[12,44]},)"
      R"("f8":{"dtype":"F8_E5M2","shape":[5],"data_offsets":[44,49]},)"
      R"("z":{"dtype":"I32","shape":[4,0],"data_offsets":[49,49]}})",
      Data(49));
  absl::StatusOr<SafetensorsHeader> h = ParseSafetensorsBytes(bytes, kLabel);
  ASSERT_TRUE(h.ok()) << h.status();
  const TensorEntry* bf = h->Find("bf");
  ASSERT_NE(bf, nullptr);
  EXPECT_EQ(bf->dtype, DType::kBF16);
  EXPECT_EQ(bf->shape, (std::vector<int64_t>{2, 3}));
  EXPECT_EQ(bf->numel, 6);
  EXPECT_EQ(bf->nbytes(), 12u);
  const TensorEntry* d = h->Find("d");
  EXPECT_EQ(d->numel, 4);
  EXPECT_EQ(d->nbytes(), 32u);
  EXPECT_EQ(h->Find("f8")->dtype, DType::kF8_E5M2);
  EXPECT_EQ(h->Find("f8")->nbytes(), 5u);
  const TensorEntry* z = h->Find("z");
  EXPECT_EQ(z->numel, 0);
  EXPECT_EQ(z->nbytes(), 0u);
  EXPECT_EQ(z->begin, 49u);
}

TEST(ParseSafetensorsBytesTest, ZeroDimScalar) {
  const std::string bytes = AssembleSafetensors(
      R"({"s":{"dtype":"F32","shape":[],"data_offsets":[0,4]}})", Data(4));
  absl::StatusOr<SafetensorsHeader> h = ParseSafetensorsBytes(bytes, kLabel);
  ASSERT_TRUE(h.ok()) << h.status();
  const TensorEntry* s = h->Find("s");
  ASSERT_NE(s, nullptr);
  EXPECT_TRUE(s->shape.empty());
  EXPECT_EQ(s->numel, 1);
  EXPECT_EQ(s->nbytes(), 4u);
}

TEST(ParseSafetensorsBytesTest, MetadataMap) {
  const std::string bytes = AssembleSafetensors(
      R"({"__metadata__":{"format":"pt","empty":"","esc":"a\"b\\c\n\u00e9"},)"
      R"("w":{"dtype":"U8","shape":[1],"data_offsets":[0,1]}})",
      Data(1));
  absl::StatusOr<SafetensorsHeader> h = ParseSafetensorsBytes(bytes, kLabel);
  ASSERT_TRUE(h.ok()) << h.status();
  EXPECT_TRUE(h->has_metadata);
  EXPECT_EQ(h->metadata.size(), 3u);
  EXPECT_EQ(h->metadata.at("format"), "pt");
  EXPECT_EQ(h->metadata.at("empty"), "");
  EXPECT_EQ(h->metadata.at("esc"), "a\"b\\c\n\xC3\xA9");
  // __metadata__ is not a tensor.
  ASSERT_EQ(h->tensors.size(), 1u);
  EXPECT_EQ(h->Find("__metadata__"), nullptr);
}

TEST(ParseSafetensorsBytesTest, EmptyMetadataIsPresentButEmpty) {
  absl::StatusOr<SafetensorsHeader> h = ParseSafetensorsBytes(
      AssembleSafetensors(R"({"__metadata__":{}})", ""), kLabel);
  ASSERT_TRUE(h.ok()) << h.status();
  EXPECT_TRUE(h->has_metadata);
  EXPECT_TRUE(h->metadata.empty());
  EXPECT_TRUE(h->tensors.empty());
}

TEST(ParseSafetensorsBytesTest, NoMetadata) {
  absl::StatusOr<SafetensorsHeader> h =
      ParseSafetensorsBytes(AssembleSafetensors("{}", ""), kLabel);
  ASSERT_TRUE(h.ok()) << h.status();
  EXPECT_FALSE(h->has_metadata);
  EXPECT_TRUE(h->metadata.empty());
  EXPECT_TRUE(h->tensors.empty());
  EXPECT_EQ(h->data_size, 0u);
}

TEST(ParseSafetensorsBytesTest, HeaderSizeIncludesPaddingAndDataOffset) {
  const std::string header =
      R"({"w":{"dtype":"I16","shape":[2],"data_offsets":[0,4]}})"
      "       ";  // 7 spaces of padding
  const std::string bytes = AssembleSafetensors(header, "abcd");
  absl::StatusOr<SafetensorsHeader> h = ParseSafetensorsBytes(bytes, kLabel);
  ASSERT_TRUE(h.ok()) << h.status();
  EXPECT_EQ(h->header_size, header.size());
  EXPECT_EQ(h->data_offset(), 8 + header.size());
  EXPECT_EQ(h->data_size, 4u);
  EXPECT_EQ(bytes.substr(h->data_offset() + h->Find("w")->begin, 4), "abcd");
}

TEST(ParseSafetensorsBytesTest, ZeroSizeTensorsMayShareOffsets) {
  const std::string bytes = AssembleSafetensors(
      R"({"a":{"dtype":"F32","shape":[0],"data_offsets":[0,0]},)"
      R"("b":{"dtype":"F32","shape":[0,7],"data_offsets":[0,0]},)"
      R"("c":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},)"
      R"("d":{"dtype":"F32","shape":[0],"data_offsets":[4,4]}})",
      Data(4));
  absl::StatusOr<SafetensorsHeader> h = ParseSafetensorsBytes(bytes, kLabel);
  ASSERT_TRUE(h.ok()) << h.status();
  EXPECT_EQ(h->tensors.size(), 4u);
}

TEST(ParseSafetensorsHeaderLengthTest, ReadsLittleEndian) {
  absl::StatusOr<uint64_t> n =
      ParseSafetensorsHeaderLength(LengthPrefix(0x0102), 0x0102 + 8, kLabel);
  ASSERT_TRUE(n.ok()) << n.status();
  EXPECT_EQ(*n, 0x0102u);
}

TEST(ParseSafetensorsHeaderLengthTest, AcceptsTheLimitAndTheWholeFile) {
  absl::StatusOr<uint64_t> n =
      ParseSafetensorsHeaderLength(LengthPrefix(kMaxSafetensorsHeaderSize),
                                   kMaxSafetensorsHeaderSize + 8, kLabel);
  ASSERT_TRUE(n.ok()) << n.status();
  EXPECT_EQ(*n, kMaxSafetensorsHeaderSize);
  n = ParseSafetensorsHeaderLength(LengthPrefix(0), 8, kLabel);
  ASSERT_TRUE(n.ok()) << n.status();
  EXPECT_EQ(*n, 0u);
}

TEST(ParseSafetensorsHeaderLengthTest, ExactErrorTexts) {
  absl::Status s =
      ParseSafetensorsHeaderLength(LengthPrefix(0), 7, kLabel).status();
  EXPECT_EQ(s, absl::InvalidArgumentError(
                   "mem.safetensors: not a safetensors file: 7 bytes is "
                   "shorter than the 8-byte header length prefix"));
  s = ParseSafetensorsHeaderLength("\x01\x02", 100, kLabel).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
  s = ParseSafetensorsHeaderLength(LengthPrefix(kMaxSafetensorsHeaderSize + 1),
                                   uint64_t{1} << 40, kLabel)
          .status();
  EXPECT_EQ(s, absl::InvalidArgumentError(
                   "mem.safetensors: not a safetensors file: the header "
                   "length field (the first 8 bytes) exceeds the limit of "
                   "100000000 bytes (the file has 1099511627776 bytes)"));
  s = ParseSafetensorsHeaderLength(LengthPrefix(11), 18, kLabel).status();
  EXPECT_EQ(s, absl::InvalidArgumentError(
                   "mem.safetensors: not a safetensors file, or truncated: the "
                   "header length field (the first 8 bytes) exceeds the file "
                   "size minus the 8-byte prefix (10)"));
}

// Issue #10 point 20: a file that is not safetensors (here an AWS key) must
// not have its first 8 bytes echoed as an integer.
TEST(ParseSafetensorsHeaderLengthTest, NeverEchoesTheLengthField) {
  const std::string secret = "AKIAIOSFODNN7EXAMPLE";
  uint64_t as_integer = 0;
  for (int i = 7; i >= 0; --i) {
    as_integer = (as_integer << 8) | static_cast<uint8_t>(secret[i]);
  }
  ASSERT_EQ(as_integer, 5067481181768469313u);
  for (uint64_t file_size : {uint64_t{20}, uint64_t{1} << 40}) {
    absl::Status s =
        ParseSafetensorsHeaderLength(secret, file_size, kLabel).status();
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
    EXPECT_TRUE(absl::StrContains(s.message(), "not a safetensors file")) << s;
    EXPECT_FALSE(absl::StrContains(s.message(), "5067481181768469313")) << s;
    EXPECT_FALSE(absl::StrContains(s.message(), "AKIA")) << s;
  }
  // The same through a file on disk.
  TempDir dir;
  const std::string path = dir.Join("credentials");
  WriteFileOrDie(path, secret + "\n");
  absl::Status s = SafetensorsFile::Open(path).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
  EXPECT_FALSE(absl::StrContains(s.message(), "5067481181768469313")) << s;
  EXPECT_TRUE(absl::StrContains(s.message(), "not a safetensors file")) << s;
}

// Tensor names are capped when a header is read.
TEST(ParseSafetensorsBytesTest, OverlongTensorNameIsRefusedBounded) {
  const std::string name(kMaxTensorNameBytes + 1, 'n');
  const std::string header = absl::StrCat(
      "{\"", name,
      "\":{\"dtype\":\"F32\",\"shape\":[0],\"data_offsets\":[0,0]}}");
  absl::Status s =
      ParseSafetensorsBytes(AssembleSafetensors(header, ""), kLabel).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
  EXPECT_TRUE(absl::StrContains(s.message(), "longer than the limit of 65536"))
      << s.message().substr(0, 300);
  EXPECT_LT(s.message().size(), 600u);
  // 60,000 bytes is within the limit.
  const std::string ok = absl::StrCat(
      "{\"", std::string(60000, 'n'),
      "\":{\"dtype\":\"F32\",\"shape\":[0],\"data_offsets\":[0,0]}}");
  EXPECT_TRUE(ParseSafetensorsBytes(AssembleSafetensors(ok, ""), kLabel).ok());
}

TEST(ParseSafetensorsBytesTest, ExactErrorTexts) {
  auto error = [](absl::string_view header, size_t data) {
    return ParseSafetensorsBytes(AssembleSafetensors(header, Data(data)),
                                 kLabel)
        .status();
  };
  EXPECT_EQ(
      error(R"({"w":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}})", 8),
      absl::InvalidArgumentError(
          "mem.safetensors: safetensors header tensor 'w': shape [3] of "
          "F32 needs 12 bytes but data_offsets [0, 8] span 8"));
  EXPECT_EQ(
      error(R"({"w":{"dtype":"Q4","shape":[1],"data_offsets":[0,1]}})", 1),
      absl::InvalidArgumentError(
          "mem.safetensors: safetensors header tensor 'w': unknown dtype "
          "'Q4' (known: BOOL, U8, I8, I16, U16, I32, U32, I64, U64, "
          "F8_E4M3, F8_E5M2, F16, BF16, F32, F64)"));
  EXPECT_EQ(
      error(R"({"w":{"dtype":"U8","shape":[1],"data_offsets":[0,1]}})", 3),
      absl::InvalidArgumentError(
          "mem.safetensors: safetensors header tensors cover 1 bytes but "
          "the data section has 3 (2 trailing bytes)"));
  EXPECT_EQ(error(R"({"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1]},)"
                  R"("b":{"dtype":"U8","shape":[1],"data_offsets":[2,3]}})",
                  3),
            absl::InvalidArgumentError(
                "mem.safetensors: safetensors header tensor 'b': data_offsets "
                "[2, 3] leave a hole of 1 bytes after offset 1 (tensors must "
                "be contiguous)"));
  EXPECT_EQ(
      error(R"({"w":{"dtype":"U8","shape":[-2],"data_offsets":[0,0]}})", 0),
      absl::InvalidArgumentError(
          "mem.safetensors: safetensors header tensor 'w': shape "
          "dimension 0 has negative value -2; it must be a non-negative "
          "integer"));
  EXPECT_EQ(error("{}\t", 0),
            absl::InvalidArgumentError(
                "mem.safetensors: safetensors header has bytes after the JSON "
                "object; only space (0x20) padding may follow it"));
  EXPECT_EQ(error("{\"k\xFF\":{}}", 0),
            absl::InvalidArgumentError(
                "mem.safetensors: safetensors header is not valid UTF-8 (byte "
                "3)"));
}

TEST(ParseSafetensorsHeaderJsonTest, ParsesTextWithGivenDataSize) {
  const std::string text =
      R"({"w":{"dtype":"BOOL","shape":[5],"data_offsets":[0,5]}}  )";
  absl::StatusOr<SafetensorsHeader> h =
      ParseSafetensorsHeaderJson(text, 5, kLabel);
  ASSERT_TRUE(h.ok()) << h.status();
  EXPECT_EQ(h->header_size, text.size());
  EXPECT_EQ(h->data_size, 5u);
  EXPECT_EQ(h->Find("w")->dtype, DType::kBOOL);
  // The same text against a larger data section leaves trailing bytes.
  EXPECT_EQ(ParseSafetensorsHeaderJson(
                R"({"w":{"dtype":"BOOL","shape":[5],"data_offsets":[0,5]}})", 6,
                kLabel)
                .status()
                .code(),
            absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace tailor
