#include "fusion/layer_options.h"

#include <cmath>

#include "absl/strings/str_cat.h"
#include "util/enum_names.h"

namespace tailor {
namespace {

constexpr std::pair<absl::string_view, Scope> kScopes[] = {
    {"layer", Scope::kLayer}, {"row", Scope::kRow}, {"block", Scope::kBlock}};
constexpr std::pair<absl::string_view, Normalization> kNorms[] = {
    {"minmax", Normalization::kMinMax}, {"zscore", Normalization::kZScore}};
constexpr std::pair<absl::string_view, Compensation> kComps[] = {
    {"sequential", Compensation::kSequential},
    {"exact", Compensation::kExact},
    {"none", Compensation::kNone}};
constexpr std::pair<absl::string_view, DeadColumns> kDead[] = {
    {"revert", DeadColumns::kRevert}, {"select", DeadColumns::kSelect}};
constexpr std::pair<absl::string_view, Variant> kVariants[] = {
    {"paper", Variant::kPaper}, {"authors-code", Variant::kAuthorsCode}};

// The authors' code's rules (TailorOptions::Validate).
absl::Status ValidateAuthorsCode(const TailorOptions& o) {
  auto only = [](absl::string_view knob, absl::string_view value,
                 absl::string_view given, absl::string_view why) {
    return absl::InvalidArgumentError(
        absl::StrCat(knob, " must be ", value, " with variant authors-code (",
                     why, "), not '", given, "'"));
  };
  if (o.scope != Scope::kBlock) {
    return only("scope", "block", ScopeName(o.scope),
                "its mask is chosen per block of block_size columns");
  }
  if (o.normalization != Normalization::kZScore) {
    return only("normalize", "zscore", NormalizationName(o.normalization),
                "it z-scores per row within each block");
  }
  if (o.compensation != Compensation::kSequential) {
    return only("compensation", "sequential", CompensationName(o.compensation),
                "its compensation is its own sequential loop");
  }
  if (o.dead_columns != DeadColumns::kSelect) {
    return only("dead_columns", "select", DeadColumnsName(o.dead_columns),
                "it keeps SparseGPT's H_jj = 1 fix-up and lets dead columns "
                "compete");
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<Scope> ParseScope(absl::string_view text) {
  return ParseEnumName(text, "scope", kScopes);
}
absl::StatusOr<Normalization> ParseNormalization(absl::string_view text) {
  return ParseEnumName(text, "normalize", kNorms);
}
absl::StatusOr<Compensation> ParseCompensation(absl::string_view text) {
  return ParseEnumName(text, "compensation", kComps);
}
absl::StatusOr<DeadColumns> ParseDeadColumns(absl::string_view text) {
  return ParseEnumName(text, "dead_columns", kDead);
}
absl::string_view ScopeName(Scope scope) { return EnumName(scope, kScopes); }
absl::string_view NormalizationName(Normalization n) {
  return EnumName(n, kNorms);
}
absl::string_view CompensationName(Compensation c) {
  return EnumName(c, kComps);
}
absl::string_view DeadColumnsName(DeadColumns d) { return EnumName(d, kDead); }
absl::StatusOr<Variant> ParseVariant(absl::string_view text) {
  std::string name(text);
  if (name == "authors_code") name = "authors-code";
  return ParseEnumName(name, "variant", kVariants);
}
absl::string_view VariantName(Variant v) { return EnumName(v, kVariants); }

void ApplyVariantDefaults(const std::function<bool(absl::string_view)>& given,
                          TailorOptions* options) {
  if (options->variant != Variant::kAuthorsCode) return;
  if (!given("omega")) options->omega = kAuthorsCodeOmega;
  if (!given("scope")) options->scope = Scope::kBlock;
  if (!given("normalize")) options->normalization = Normalization::kZScore;
  if (!given("dead_columns")) options->dead_columns = DeadColumns::kSelect;
}

absl::Status TailorOptions::Validate() const {
  if (!(keep_ratio > 0 && keep_ratio <= 1)) {
    return absl::InvalidArgumentError(
        absl::StrCat("keep ratio must be in (0, 1], not ", keep_ratio));
  }
  if (!(omega >= 0 && omega <= 1)) {
    return absl::InvalidArgumentError(
        absl::StrCat("omega must be in [0, 1], not ", omega));
  }
  if (!(damp >= 0) || !std::isfinite(damp)) {
    return absl::InvalidArgumentError(
        absl::StrCat("damp must be a finite number >= 0, not ", damp));
  }
  if (block_size < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("block size must be >= 1, not ", block_size));
  }
  if (!(max_damp >= damp)) {
    return absl::InvalidArgumentError(
        absl::StrCat("max damp (", max_damp, ") must be >= damp (", damp, ")"));
  }
  if (exact_chunk_bytes < 1) {
    return absl::InvalidArgumentError("exact chunk bytes must be positive");
  }
  if (variant == Variant::kAuthorsCode) return ValidateAuthorsCode(*this);
  return absl::OkStatus();
}

}  // namespace tailor
