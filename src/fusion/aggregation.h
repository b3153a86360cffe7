#ifndef TAILOR_FUSION_AGGREGATION_H_
#define TAILOR_FUSION_AGGREGATION_H_

// Torch-free: the spec (fusion_spec.h) names an aggregation; the maths that
// applies it is Stitch() in merge_methods.h.

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace tailor {

// How stitched task patches combine where they overlap (src/DESIGN.md §2.4).
enum class Aggregation { kMeanSelected, kMeanAll, kSum };
// INVALID_ARGUMENT naming "aggregate" and the allowed names.
absl::StatusOr<Aggregation> ParseAggregation(absl::string_view text);
absl::string_view AggregationName(Aggregation a);

}  // namespace tailor

#endif  // TAILOR_FUSION_AGGREGATION_H_
