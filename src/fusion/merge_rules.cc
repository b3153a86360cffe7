#include "fusion/merge_rules.h"

#include <algorithm>
#include <cmath>
#include <utility>

#include "util/enum_names.h"

namespace tailor {
namespace {

constexpr std::pair<absl::string_view, CountRule> kCountRules[] = {
    {"round", CountRule::kRound}, {"floor", CountRule::kFloor}};

constexpr std::pair<absl::string_view, SignCancel> kSignCancels[] = {
    {"zero", SignCancel::kZero}, {"positive", SignCancel::kPositive}};

}  // namespace

absl::StatusOr<CountRule> ParseCountRule(absl::string_view text) {
  return ParseEnumName(text, "count_rule", kCountRules);
}
absl::string_view CountRuleName(CountRule rule) {
  return EnumName(rule, kCountRules);
}

int64_t RuleCount(CountRule rule, double fraction, int64_t n) {
  const double x = fraction * static_cast<double>(n);
  const double c = rule == CountRule::kRound ? std::round(x) : std::floor(x);
  return std::clamp<int64_t>(static_cast<int64_t>(c), 0, n);
}

absl::StatusOr<SignCancel> ParseSignCancel(absl::string_view text) {
  return ParseEnumName(text, "sign_cancel", kSignCancels);
}
absl::string_view SignCancelName(SignCancel rule) {
  return EnumName(rule, kSignCancels);
}

}  // namespace tailor
