#ifndef TAILOR_FUSION_DENSE_MERGE_KERNEL_H_
#define TAILOR_FUSION_DENSE_MERGE_KERNEL_H_

#include <cstdint>
#include <vector>

namespace tailor {

// One fused pass of streamed task arithmetic over a chunk of BF16 tensors
// with float32 compute: per element
//   d_i = ft_i - pre (float32), sum = d_0 + d_1 + ... (left to right),
//   delta = sum * float(lambda), mask = delta != 0,
//   fused = mask ? pre + delta : pre, rounded to BF16 (nearest even),
// exactly the roundings of the tensor-op path (TaskArithmetic, FuseTensor,
// ToStoredTensor) on finite values. `pre`, `fts[i]` and `out` hold `n`
// BF16 bit patterns; `kept` receives the mask's count.
//
// Returns false, leaving `out` and `kept` unspecified, when an input or a
// fused value is not finite: the caller then takes the tensor-op path for
// the chunk, which reports the bad input or produces LibTorch's own bytes
// for NaN/Inf. Runs on LibTorch's intra-op thread pool.
bool TaskArithmeticBf16Chunk(const uint16_t* pre,
                             const std::vector<const uint16_t*>& fts, int64_t n,
                             double lambda, uint16_t* out, int64_t* kept);

}  // namespace tailor

#endif  // TAILOR_FUSION_DENSE_MERGE_KERNEL_H_
