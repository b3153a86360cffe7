#ifndef TAILOR_FUSION_STREAMED_BF16_LOOPS_H_
#define TAILOR_FUSION_STREAMED_BF16_LOOPS_H_

// The BF16 one-task loops of the streamed threshold merges
// (streamed_merge.cc's bits_ path: BF16 checkpoints, float32 compute, one
// task), on the stored bits: free functions compiled for AVX2 as well as
// the baseline (as dense_merge_kernel.cc's), with the same IEEE float32
// operations either way (no FMA: the file is built with
// -ffp-contract=off), so the same bits. No LibTorch.

#include <cstdint>

namespace tailor::streamed_internal {

// k[j] = MagnitudeKey(float(ft) - float(pre)) for j in [0, m) (the float32
// delta's bits with the sign bit set, StreamedTopK<float>'s key of |D|);
// *bad: whether an input is not finite; *bad_delta: whether a delta is
// not; *lo, *hi: the least and greatest key.
void Bf16DeltaKeys(const uint16_t* pb, const uint16_t* fb, int64_t m,
                   uint32_t* k, uint32_t* bad_out, uint32_t* bad_delta_out,
                   uint32_t* lo_out, uint32_t* hi_out);

// The fused output of one chunk (Streamer::OutputBits): mask = key > a, or
// key in [b, b + width] when take_ties; magnitude: delta = D on the mask,
// kept = the mask; TIES: delta = (mask ? D : +0) * lambda, kept = delta !=
// 0; out = kept ? bf16(pre + delta) : pre's bits. Returns the kept count;
// *ties: the keys in [b, b + width]; *bad: an input is not finite.
int64_t Bf16OutputChunk(const uint16_t* pb, const uint16_t* fb, int64_t m,
                        uint32_t a, uint32_t b, uint32_t width,
                        uint32_t take_ties, bool magnitude, float lambda,
                        uint16_t* o, int64_t* ties_out, uint32_t* bad_out);

}  // namespace tailor::streamed_internal

#endif  // TAILOR_FUSION_STREAMED_BF16_LOOPS_H_
