#include "fusion/aggregation.h"

#include <utility>

#include "util/enum_names.h"

namespace tailor {
namespace {

constexpr std::pair<absl::string_view, Aggregation> kAggregations[] = {
    {"mean_selected", Aggregation::kMeanSelected},
    {"mean_all", Aggregation::kMeanAll},
    {"sum", Aggregation::kSum}};

}  // namespace

absl::StatusOr<Aggregation> ParseAggregation(absl::string_view text) {
  return ParseEnumName(text, "aggregate", kAggregations);
}

absl::string_view AggregationName(Aggregation a) {
  return EnumName(a, kAggregations);
}

}  // namespace tailor
