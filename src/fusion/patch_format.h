#ifndef TAILOR_FUSION_PATCH_FORMAT_H_
#define TAILOR_FUSION_PATCH_FORMAT_H_

// What the patch writer (patch_writer.cc) and reader (patch.cc) share of
// the tailor-patch/1 layout (patch.h): the stored tensors' names and the
// element count of a recorded shape.

#include <cstdint>
#include <limits>
#include <optional>
#include <vector>

namespace tailor {

// Weight W is stored as "<W>.mask" and "<W>.values".
inline constexpr char kPatchMaskSuffix[] = ".mask";
inline constexpr char kPatchValuesSuffix[] = ".values";

// Product of `shape` with overflow checks; nullopt on overflow or a negative
// dimension.
inline std::optional<int64_t> PatchShapeNumel(
    const std::vector<int64_t>& shape) {
  int64_t n = 1;
  for (int64_t d : shape) {
    if (d < 0) return std::nullopt;
    if (d != 0 && n > std::numeric_limits<int64_t>::max() / d) {
      return std::nullopt;
    }
    n *= d;
  }
  return n;
}

}  // namespace tailor

#endif  // TAILOR_FUSION_PATCH_FORMAT_H_
