// DeltaChunkReader (fusion/delta_chunk_reader.h): the chunks of the base and
// the tasks' deltas in the compute type, and FuseOne's NaN/Inf errors.

#include "fusion/delta_chunk_reader.h"

#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <limits>
#include <memory>
#include <string>
#include <vector>

#include "io/checkpoint.h"
#include "io/tensor_convert.h"
#include "testing/test_util.h"

namespace tailor {
namespace {

using ::tailor::testing::SerializeSafetensors;
using ::tailor::testing::TempDir;
using ::tailor::testing::ToRaw;
using ::tailor::testing::WriteFileOrDie;

class DeltaChunkReaderTest : public ::testing::Test {
 protected:
  // A one-tensor checkpoint "w" holding `values` in `type`.
  std::unique_ptr<Checkpoint> Write(const std::string& name,
                                    const at::Tensor& values,
                                    at::ScalarType type) {
    const std::string path = dir_.path() + "/" + name + ".safetensors";
    WriteFileOrDie(path, SerializeSafetensors({ToRaw("w", values.to(type))}));
    auto ckpt = Checkpoint::Open(path);
    EXPECT_TRUE(ckpt.ok()) << ckpt.status();
    return *std::move(ckpt);
  }

  StreamedTensor Tensor(const Checkpoint& base,
                        const std::vector<const Checkpoint*>& fts,
                        int64_t chunk, bool float64) {
    const TensorInfo& info = *base.Find("w");
    StreamedTensor t;
    t.name = "w";
    t.stored = *ToScalarType(info.dtype);
    t.numel = info.numel;
    t.element_size = info.nbytes / info.numel;
    t.chunk = chunk;
    t.base = &base;
    t.finetuned = fts;
    t.float64 = float64;
    return t;
  }

  TempDir dir_;
};

TEST_F(DeltaChunkReaderTest, ReadsEachChunkAsPreAndDeltasInTheComputeType) {
  at::manual_seed(3);
  const at::Tensor pre = at::randn({23});
  const at::Tensor ft0 = pre + at::randn({23});
  const at::Tensor ft1 = pre - 0.5 * at::randn({23});
  for (at::ScalarType stored : {at::kBFloat16, at::kFloat, at::kDouble}) {
    for (bool float64 : {false, true}) {
      SCOPED_TRACE(::testing::Message() << stored << " float64=" << float64);
      const std::string tag = c10::toString(stored);
      auto base = Write("base-" + tag, pre, stored);
      auto a = Write("a-" + tag, ft0, stored);
      auto b = Write("b-" + tag, ft1, stored);
      const StreamedTensor t = Tensor(*base, {a.get(), b.get()}, 5, float64);
      DeltaChunkReader in(t);
      const at::ScalarType compute = float64 ? at::kDouble : at::kFloat;
      EXPECT_EQ(in.compute(), compute);
      // The stored values in the compute type, as FuseOne reads them.
      const at::Tensor want_pre = pre.to(stored).to(compute);
      const at::Tensor want0 = ft0.to(stored).to(compute) - want_pre;
      const at::Tensor want1 = ft1.to(stored).to(compute) - want_pre;
      for (int64_t off = 0; off < 23; off += 5) {
        const int64_t m = std::min<int64_t>(5, 23 - off);
        ASSERT_TRUE(in.Read(off, m).ok());
        ASSERT_EQ(in.pre().numel(), m);
        EXPECT_EQ(in.pre().scalar_type(), compute);
        EXPECT_TRUE(at::equal(in.pre(), want_pre.narrow(0, off, m)));
        ASSERT_EQ(in.deltas().size(), 2u);
        EXPECT_TRUE(at::equal(in.deltas()[0], want0.narrow(0, off, m)));
        EXPECT_TRUE(at::equal(in.deltas()[1], want1.narrow(0, off, m)));
      }
      EXPECT_EQ(in.Buffer(at::kBool).numel(), 5);
      EXPECT_EQ(in.raw().scalar_type(), stored);
    }
  }
}

TEST_F(DeltaChunkReaderTest, RefusesNaNOrInfAsFuseOneDoes) {
  at::Tensor pre = at::ones({8});
  at::Tensor ft = at::ones({8});
  ft[6] = std::numeric_limits<float>::infinity();
  auto base = Write("base", pre, at::kFloat);
  auto a = Write("a", ft, at::kFloat);
  const StreamedTensor t = Tensor(*base, {a.get()}, 4, false);
  DeltaChunkReader in(t);
  EXPECT_TRUE(in.Read(0, 4).ok());
  absl::Status s = in.Read(4, 4);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(s.message(), "w: fine-tuned tensor contains NaN or Inf");

  // The base is checked first.
  pre[5] = std::numeric_limits<float>::quiet_NaN();
  auto bad_base = Write("bad-base", pre, at::kFloat);
  const StreamedTensor u = Tensor(*bad_base, {a.get()}, 4, false);
  DeltaChunkReader in2(u);
  s = in2.Read(4, 4);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(s.message(), "w: pre-trained tensor contains NaN or Inf");
}

TEST_F(DeltaChunkReaderTest, AReadPastTheTensorIsTheCheckpointsError) {
  auto base = Write("base", at::ones({4}), at::kFloat);
  auto a = Write("a", at::ones({4}), at::kFloat);
  const StreamedTensor t = Tensor(*base, {a.get()}, 4, false);
  DeltaChunkReader in(t);
  EXPECT_EQ(in.Read(2, 4).code(), absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace tailor
