#ifndef TAILOR_FUSION_MERGE_RULES_H_
#define TAILOR_FUSION_MERGE_RULES_H_

// Torch-free: the TIES-family compatibility switches the spec names
// (fusion_spec.h); the maths that applies them is in mergekit_methods.h.

#include <cstdint>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace tailor {

// How a fraction f of n entries becomes a count: kRound keeps round(f * n)
// (ours, tailor_scores.h's KeepCount), kFloor keeps floor(f * n) (mergekit's
// int(density * n)). Used by TIES's trim and by breadcrumbs.
enum class CountRule { kRound, kFloor };
// INVALID_ARGUMENT naming "count_rule" and the allowed names.
absl::StatusOr<CountRule> ParseCountRule(absl::string_view text);
absl::string_view CountRuleName(CountRule rule);
// The count of `fraction` (in [0, 1]) of n under `rule`, in [0, n].
int64_t RuleCount(CountRule rule, double fraction, int64_t n);

// What the sign election of TIES, DARE-TIES and DELLA does where the
// (weighted) trimmed values sum to exactly 0 (e.g. +0.5 and -0.5):
// kZero elects no sign and writes 0 there (ours); kPositive elects + (the
// sum is >= 0) and writes the mean of the positive values, 0.5 (mergekit's
// get_mask: majority_sign = sum >= 0).
enum class SignCancel { kZero, kPositive };
// INVALID_ARGUMENT naming "sign_cancel" and the allowed names.
absl::StatusOr<SignCancel> ParseSignCancel(absl::string_view text);
absl::string_view SignCancelName(SignCancel rule);

}  // namespace tailor

#endif  // TAILOR_FUSION_MERGE_RULES_H_
