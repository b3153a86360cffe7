#include "fusion/fusion_spec.h"

#include <cctype>
#include <cmath>
#include <regex>
#include <set>

#include "absl/strings/str_cat.h"
#include "util/enum_names.h"
#include "util/status_macros.h"

namespace tailor {
namespace {

constexpr std::pair<absl::string_view, Method> kMethods[] = {
    {"tailor", Method::kTailor},
    {"magnitude", Method::kMagnitude},
    {"task_arithmetic", Method::kTaskArithmetic},
    {"ties", Method::kTies},
    {"dare", Method::kDare},
    {"spider", Method::kSpider}};

constexpr std::pair<absl::string_view, MismatchPolicy> kPolicies[] = {
    {"error", MismatchPolicy::kError},
    {"copy_base", MismatchPolicy::kCopyBase}};

absl::Status Invalid(absl::string_view field, absl::string_view rule) {
  return absl::InvalidArgumentError(absl::StrCat(field, ": ", rule));
}

absl::Status CheckRegexes(const std::vector<std::string>& patterns,
                          absl::string_view field) {
  for (size_t i = 0; i < patterns.size(); ++i) {
    try {
      std::regex re(patterns[i], std::regex::ECMAScript);
    } catch (const std::regex_error& e) {
      return Invalid(
          absl::StrCat(field, "[", i, "]"),
          absl::StrCat("'", patterns[i],
                       "' is not a valid regular expression: ", e.what()));
    }
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<Method> ParseMethod(absl::string_view text) {
  return ParseEnumName(text, "method", kMethods);
}
absl::string_view MethodName(Method method) {
  return EnumName(method, kMethods);
}
absl::StatusOr<MismatchPolicy> ParseMismatchPolicy(absl::string_view text) {
  return ParseEnumName(text, "on_mismatch", kPolicies);
}
absl::string_view MismatchPolicyName(MismatchPolicy policy) {
  return EnumName(policy, kPolicies);
}

absl::Status FusionSpec::Validate() const {
  if (pretrained_uri.empty()) return Invalid("pretrained", "is required");
  if (tasks.empty()) {
    return Invalid("tasks",
                   "at least one fine-tuned checkpoint or patch is required");
  }
  if (output_uri.empty() && patch_uri.empty() && report_uri.empty()) {
    return Invalid(
        "outputs",
        "name at least one of out (fused checkpoint), patch_out, report");
  }
  TAILOR_RETURN_IF_ERROR(tailor.Validate());
  std::set<std::string> labels;
  for (size_t i = 0; i < tasks.size(); ++i) {
    const TaskSpec& t = tasks[i];
    const std::string field = absl::StrCat("tasks[", i, "]");
    if (t.finetuned_uri.empty() == t.patch_uri.empty()) {
      return Invalid(field, "exactly one of finetuned and patch must be set");
    }
    if (!t.label.empty() && !labels.insert(t.label).second) {
      return Invalid(absl::StrCat(field, ".label"),
                     absl::StrCat("'", t.label, "' is used twice"));
    }
    for (char c : t.label) {
      if (!(std::isalnum(static_cast<unsigned char>(c)) || c == '-' ||
            c == '_' || c == '.')) {
        return Invalid(absl::StrCat(field, ".label"),
                       "may contain only letters, digits, '-', '_' and '.'");
      }
    }
    if (t.keep_ratio && !(*t.keep_ratio > 0 && *t.keep_ratio <= 1)) {
      return Invalid(absl::StrCat(field, ".keep"), "must be in (0, 1]");
    }
    if (t.omega && !(*t.omega >= 0 && *t.omega <= 1)) {
      return Invalid(absl::StrCat(field, ".omega"), "must be in [0, 1]");
    }
    if (!t.patch_uri.empty() && method != Method::kTailor &&
        method != Method::kMagnitude) {
      return Invalid(
          field,
          "patch tasks can only be stitched (method tailor or magnitude)");
    }
    if (!t.patch_uri.empty() && !t.hessian_uri.empty()) {
      return Invalid(field,
                     "a patch task takes no hessians (the patch is final)");
    }
    if (!t.hessian_uri.empty() && method != Method::kTailor) {
      return Invalid(
          field, absl::StrCat("hessians are used only by method tailor, not ",
                              MethodName(method)));
    }
  }
  if (method == Method::kSpider && tasks.size() != 1) {
    return Invalid("method", "spider merges exactly one task");
  }
  if (!(lambda > 0) || !std::isfinite(lambda)) {
    return Invalid("lambda", "must be a finite number > 0");
  }
  if (!(density > 0 && density <= 1))
    return Invalid("density", "must be in (0, 1]");
  if (!(drop >= 0 && drop < 1)) return Invalid("drop", "must be in [0, 1)");
  if (threads < 0) return Invalid("threads", "must be >= 0");
  if (device != "auto" && device != "cpu" && device != "cuda" &&
      device.rfind("cuda:", 0) != 0) {
    return Invalid("device", "must be auto, cpu, cuda or cuda:N");
  }
  TAILOR_RETURN_IF_ERROR(CheckRegexes(include, "include"));
  TAILOR_RETURN_IF_ERROR(CheckRegexes(exclude, "exclude"));
  return absl::OkStatus();
}

nlohmann::json FusionSpec::ToJson() const {
  nlohmann::json j;
  j["pretrained"] = pretrained_uri;
  j["method"] = std::string(MethodName(method));
  nlohmann::json ts = nlohmann::json::array();
  for (const TaskSpec& t : tasks) {
    nlohmann::json tj;
    tj["label"] = t.label;
    if (!t.finetuned_uri.empty()) tj["finetuned"] = t.finetuned_uri;
    if (!t.patch_uri.empty()) tj["patch"] = t.patch_uri;
    if (!t.hessian_uri.empty()) tj["hessians"] = t.hessian_uri;
    if (t.keep_ratio) tj["keep"] = *t.keep_ratio;
    if (t.omega) tj["omega"] = *t.omega;
    ts.push_back(tj);
  }
  j["tasks"] = ts;
  j["keep"] = tailor.keep_ratio;
  j["omega"] = tailor.omega;
  j["scope"] = std::string(ScopeName(tailor.scope));
  j["normalize"] = std::string(NormalizationName(tailor.normalization));
  j["compensation"] = std::string(CompensationName(tailor.compensation));
  j["damp"] = tailor.damp;
  j["block_size"] = tailor.block_size;
  j["float64"] = tailor.float64;
  j["aggregate"] = std::string(AggregationName(aggregation));
  j["lambda"] = lambda;
  j["density"] = density;
  j["drop"] = drop;
  j["seed"] = seed;
  j["include"] = include;
  j["exclude"] = exclude;
  j["on_mismatch"] = std::string(MismatchPolicyName(on_mismatch));
  j["out"] = output_uri;
  j["patch_out"] = patch_uri;
  j["report"] = report_uri;
  j["device"] = device;
  j["threads"] = threads;
  return j;
}

}  // namespace tailor
