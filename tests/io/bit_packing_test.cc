#include "io/bit_packing.h"

#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <cstdint>
#include <limits>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "testing/test_util.h"

namespace tailor {
namespace {

using ::tailor::testing::BitEqual;

// The bits of `mask` packed by hand, bit by bit: flat index i -> byte i / 8,
// bit i % 8.
std::vector<uint8_t> PackByHand(const at::Tensor& mask) {
  const at::Tensor flat = mask.reshape({-1}).contiguous();
  const int64_t n = flat.numel();
  std::vector<uint8_t> out(static_cast<size_t>((n + 7) / 8), 0);
  for (int64_t i = 0; i < n; ++i) {
    if (flat[i].item<bool>()) out[i / 8] |= static_cast<uint8_t>(1u << (i % 8));
  }
  return out;
}

TEST(BitPackingTest, PackedMaskBytesIsCeilOfAnEighth) {
  EXPECT_EQ(PackedMaskBytes(0), 0);
  EXPECT_EQ(PackedMaskBytes(1), 1);
  EXPECT_EQ(PackedMaskBytes(8), 1);
  EXPECT_EQ(PackedMaskBytes(9), 2);
  // No overflow at the top of the range ((n + 7) / 8 would overflow).
  const int64_t max = std::numeric_limits<int64_t>::max();
  EXPECT_EQ(PackedMaskBytes(max), max / 8 + 1);
}

TEST(BitPackingTest, PackMatchesHandPackingForEveryTailLength) {
  at::manual_seed(3);
  for (int64_t n : {0, 1, 7, 8, 9, 15, 16, 17, 63, 64, 65, 1001}) {
    const at::Tensor mask = at::rand({n}) < 0.4;
    absl::StatusOr<at::Tensor> packed = PackBits(mask, "t");
    ASSERT_TRUE(packed.ok()) << packed.status();
    ASSERT_EQ(packed->numel(), PackedMaskBytes(n)) << n;
    const std::vector<uint8_t> want = PackByHand(mask);
    for (int64_t j = 0; j < packed->numel(); ++j) {
      EXPECT_EQ((*packed)[j].item<uint8_t>(), want[j])
          << "n " << n << " byte " << j;
    }
    int64_t popcount = -1;
    absl::StatusOr<at::Tensor> back = UnpackBits(*packed, n, &popcount, "t");
    ASSERT_TRUE(back.ok()) << back.status();
    EXPECT_TRUE(BitEqual(*back, mask)) << n;
    EXPECT_EQ(popcount, mask.sum().item<int64_t>()) << n;
  }
}

TEST(BitPackingTest, PacksAnyShapeRowMajor) {
  const at::Tensor mask =
      at::tensor({1, 0, 0, 1, 1, 1, 0, 0, 0, 1, 0, 1}, at::kInt)
          .to(at::kBool)
          .reshape({3, 4});
  absl::StatusOr<at::Tensor> packed = PackBits(mask, "t");
  ASSERT_TRUE(packed.ok()) << packed.status();
  ASSERT_EQ(packed->numel(), 2);
  EXPECT_EQ((*packed)[0].item<uint8_t>(), 0b00111001);
  EXPECT_EQ((*packed)[1].item<uint8_t>(), 0b1010);
}

TEST(BitPackingTest, UnpackRefusesWrongSizesAndSetPadBits) {
  int64_t popcount = 0;
  const at::Tensor two = at::zeros({2}, at::kByte);
  absl::Status s = UnpackBits(two, 20, &popcount, "w").status();
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(absl::StrContains(s.message(), "w: mask must be U8 [3]")) << s;
  EXPECT_FALSE(UnpackBits(two.to(at::kInt), 16, &popcount, "w").ok());

  // 12 entries: bits 4..7 of byte 1 are padding.
  at::Tensor padded = at::tensor({0xff, 0x1f}, at::kByte);
  s = UnpackBits(padded, 12, &popcount, "w").status();
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(absl::StrContains(
      s.message(),
      "w: pad bits of the last mask byte (bits 4..7 of byte 1 = "
      "0x1f) must be zero; the mask covers 12 entries"))
      << s;
  EXPECT_TRUE(
      UnpackBits(at::tensor({0xff, 0x0f}, at::kByte), 12, &popcount, "w").ok());
  EXPECT_EQ(popcount, 12);
}

TEST(BitPackingTest, CheckPadBits) {
  EXPECT_TRUE(CheckPadBits(0xff, 16, "x").ok());  // no padding
  EXPECT_TRUE(CheckPadBits(0x07, 11, "x").ok());
  EXPECT_FALSE(CheckPadBits(0x08, 11, "x").ok());
  EXPECT_FALSE(CheckPadBits(0x80, 1, "x").ok());
}

TEST(BitPackingTest, PiecewisePackingAndUnpackingMatchTheWholeMask) {
  at::manual_seed(5);
  const int64_t n = 203;
  const at::Tensor mask = at::rand({n}) < 0.5;
  absl::StatusOr<at::Tensor> whole = PackBits(mask, "t");
  ASSERT_TRUE(whole.ok());
  // Packed in uneven pieces, as the streamed stitch does.
  std::string packed(static_cast<size_t>(PackedMaskBytes(n)), '\0');
  int64_t bit = 0;
  for (int64_t m : {1, 7, 30, 64, 3, 98}) {
    const at::Tensor piece = mask.narrow(0, bit, m).contiguous();
    OrBits(piece.data_ptr<bool>(), m, bit, packed.data());
    bit += m;
  }
  ASSERT_EQ(bit, n);
  for (int64_t j = 0; j < whole->numel(); ++j) {
    EXPECT_EQ(static_cast<uint8_t>(packed[j]), (*whole)[j].item<uint8_t>())
        << j;
  }
  // Unpacked in pieces starting at any bit.
  const uint8_t* bytes = reinterpret_cast<const uint8_t*>(packed.data());
  at::Tensor out = at::empty({n}, at::kBool);
  int64_t set = 0;
  for (int64_t off = 0; off < n;) {
    const int64_t m = std::min<int64_t>(n - off, 11 + off % 5);
    set +=
        UnpackBitRange(bytes + off / 8, off % 8, m, out.data_ptr<bool>() + off);
    off += m;
  }
  EXPECT_TRUE(BitEqual(out, mask));
  EXPECT_EQ(set, mask.sum().item<int64_t>());
}

}  // namespace
}  // namespace tailor
