// The working-memory estimates: a streamed tensor counts its chunk
// buffers and selection state, not the tensor; the whole-tensor estimate
// stays for what materialises.

#include "fusion/working_memory.h"

#include <gtest/gtest.h>

#include "fusion/top_k_window.h"

namespace tailor {
namespace {

TensorInfo Info(int64_t rows, int64_t cols, DType dtype, int64_t esize) {
  TensorInfo info;
  info.name = "model.layers.0.mlp.gate_proj.weight";
  info.dtype = dtype;
  info.shape = {rows, cols};
  info.numel = rows * cols;
  info.nbytes = static_cast<uint64_t>(info.numel * esize);
  return info;
}

FusionSpec Spec(Method method, bool float64 = false) {
  FusionSpec spec;
  spec.method = method;
  spec.tailor.float64 = float64;
  return spec;
}

// What streamed_merge.cc's Streamer really allocates for a BF16 tensor in
// float32 with T tasks and chunks of c: the base's and a task's stored
// chunk, pre and T deltas, the keys, the mask, the fused chunk and its
// stored form; each task's radix histogram and window budget.
int64_t RealStreamedBytes(int64_t n, int64_t c, int64_t tasks) {
  const int64_t buffers =
      c * 2 + c * 2 + c * 4 + tasks * c * 4 + c * 4 + c + c * 4 + c * 2;
  const int64_t state =
      tasks * ((int64_t{1} << 16) * 8 + TopKWindow<float>::Budget(n, c) * 4);
  return buffers + state;
}

TEST(WorkingMemoryTest, AStreamedMagnitudeTensorCountsItsChunksNotTheTensor) {
  const TensorInfo info = Info(11008, 4096, DType::kBF16, 2);
  const int64_t n = info.numel, e = 4, chunk = int64_t{1} << 18;
  for (Method method : {Method::kMagnitude, Method::kTies}) {
    const int64_t streamed =
        EstimateStreamedWorkingBytes(Spec(method), info, 1, chunk);
    EXPECT_LT(streamed, n * e / 4);
    EXPECT_GE(streamed, RealStreamedBytes(n, chunk, 1));
    // The whole-tensor estimate (what FuseOne materialises) is unchanged.
    const int64_t whole =
        EstimateWorkingBytes(Spec(method), info, {WorkingMemoryTask{}}, {});
    EXPECT_EQ(whole, n * e * 3 + n * (7 * e + 1));
  }
}

TEST(WorkingMemoryTest, StreamedEstimatesGrowWithTasksChunksAndPrecision) {
  const TensorInfo info = Info(11008, 4096, DType::kBF16, 2);
  const int64_t n = info.numel, chunk = int64_t{1} << 18;
  const FusionSpec mag = Spec(Method::kMagnitude);
  const int64_t one = EstimateStreamedWorkingBytes(mag, info, 1, chunk);
  const int64_t three = EstimateStreamedWorkingBytes(mag, info, 3, chunk);
  EXPECT_GE(three, RealStreamedBytes(n, chunk, 3));
  EXPECT_GE(three - one, 2 * (chunk * 2 + chunk * 4 + (int64_t{1} << 19)));
  EXPECT_GT(EstimateStreamedWorkingBytes(Spec(Method::kMagnitude, true), info,
                                         1, chunk),
            one);
  EXPECT_GT(EstimateStreamedWorkingBytes(mag, info, 1, 4 * chunk), one);
  // Task arithmetic keeps no selection state.
  EXPECT_LT(EstimateStreamedWorkingBytes(Spec(Method::kTaskArithmetic), info, 1,
                                         chunk),
            one - (int64_t{1} << 19));
  // A chunk larger than the tensor is the tensor.
  const TensorInfo small = Info(4, 4, DType::kF32, 4);
  EXPECT_EQ(EstimateStreamedWorkingBytes(mag, small, 1, chunk),
            EstimateStreamedWorkingBytes(mag, small, 1, 16));
}

}  // namespace
}  // namespace tailor
