#include "fusion/fusion_spec.h"

#include <algorithm>
#include <cctype>
#include <cmath>
#include <limits>
#include <set>
#include <type_traits>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "fusion/spec_gradients.h"
#include "util/enum_names.h"
#include "util/field_error.h"
#include "util/json_util.h"
#include "util/quote.h"
#include "util/status_macros.h"

namespace tailor {
namespace {

constexpr std::pair<absl::string_view, Method> kMethods[] = {
    {"tailor", Method::kTailor},
    {"magnitude", Method::kMagnitude},
    {"task_arithmetic", Method::kTaskArithmetic},
    {"ties", Method::kTies},
    {"dare", Method::kDare},
    {"spider", Method::kSpider},
    {"linear", Method::kLinear},
    {"slerp", Method::kSlerp},
    {"dare_ties", Method::kDareTies},
    {"breadcrumbs", Method::kBreadcrumbs},
    {"della", Method::kDella},
    {"model_stock", Method::kModelStock}};

constexpr std::pair<absl::string_view, MismatchPolicy> kPolicies[] = {
    {"error", MismatchPolicy::kError},
    {"copy_base", MismatchPolicy::kCopyBase}};

absl::StatusOr<std::vector<Regex>> CompileRegexes(
    const std::vector<std::string>& patterns, absl::string_view field) {
  if (patterns.size() > kMaxFilterPatterns) {
    return FieldError(
        field, absl::StrCat("has ", patterns.size(), " patterns; the limit is ",
                            kMaxFilterPatterns));
  }
  std::vector<Regex> out;
  for (size_t i = 0; i < patterns.size(); ++i) {
    TAILOR_ASSIGN_OR_RETURN(
        Regex re,
        Regex::Compile(patterns[i], absl::StrCat(field, "[", i, "]")));
    out.push_back(std::move(re));
  }
  return out;
}

// Text fields end up in JSON (reports, fingerprints), which must be UTF-8.
absl::Status CheckUtf8(const std::string& value, absl::string_view field) {
  if (size_t bad = FindInvalidUtf8(value); bad != absl::string_view::npos) {
    return FieldError(
        field,
        absl::StrCat(Quote(value), " is not valid UTF-8 (byte ", bad, ")"));
  }
  return absl::OkStatus();
}

absl::Status CheckUri(const std::string& uri, absl::string_view field) {
  TAILOR_RETURN_IF_ERROR(CheckUtf8(uri, field));
  if (uri.size() > kMaxUriBytes) {
    return FieldError(field,
                      absl::StrCat(Quote(uri), " is longer than the limit of ",
                                   kMaxUriBytes, " bytes"));
  }
  return absl::OkStatus();
}

// A JSON key as a field name in errors: bounded (keys are user text).
std::string KeyName(const std::string& key) {
  return key.size() <= 40 ? key : Quote(key, 40);
}

// Typed readers for FromJson: the key must hold the named JSON type.
absl::Status WrongType(absl::string_view key, absl::string_view type) {
  return FieldError(key, absl::StrCat("must be ", type));
}
absl::Status ReadString(const nlohmann::json& v, absl::string_view key,
                        std::string* out) {
  if (!v.is_string()) return WrongType(key, "a string");
  *out = v.get<std::string>();
  return absl::OkStatus();
}
absl::Status ReadNumber(const nlohmann::json& v, absl::string_view key,
                        double* out) {
  if (!v.is_number()) return WrongType(key, "a number");
  *out = v.get<double>();
  return absl::OkStatus();
}
absl::Status ReadBool(const nlohmann::json& v, absl::string_view key,
                      bool* out) {
  if (!v.is_boolean()) return WrongType(key, "true or false");
  *out = v.get<bool>();
  return absl::OkStatus();
}
template <typename Int>
absl::Status ReadInt(const nlohmann::json& v, absl::string_view key, Int* out) {
  if (!v.is_number_integer()) return WrongType(key, "an integer");
  if (std::is_unsigned_v<Int> && !v.is_number_unsigned()) {
    return WrongType(key, "a non-negative integer");
  }
  // Out-of-range values are refused, not wrapped (threads: 2^32 + 1).
  if (v.is_number_unsigned()) {
    if (v.get<uint64_t>() >
        static_cast<uint64_t>(std::numeric_limits<Int>::max())) {
      return WrongType(key, "an integer in range");
    }
  } else if (v.get<int64_t>() <
                 static_cast<int64_t>(std::numeric_limits<Int>::min()) ||
             v.get<int64_t>() > static_cast<int64_t>(std::min<uint64_t>(
                                    std::numeric_limits<Int>::max(),
                                    std::numeric_limits<int64_t>::max()))) {
    return WrongType(key, "an integer in range");
  }
  *out = v.get<Int>();
  return absl::OkStatus();
}
absl::Status ReadStrings(const nlohmann::json& v, absl::string_view key,
                         std::vector<std::string>* out) {
  if (!v.is_array()) return WrongType(key, "a list of strings");
  out->clear();
  for (size_t i = 0; i < v.size(); ++i) {
    std::string s;
    TAILOR_RETURN_IF_ERROR(
        ReadString(v[i], absl::StrCat(key, "[", i, "]"), &s));
    out->push_back(std::move(s));
  }
  return absl::OkStatus();
}
// Reads an optional field with `read` (one of the readers above); the
// field is set only when the value is valid.
template <typename T, typename Read>
absl::Status ReadOptional(const nlohmann::json& v, absl::string_view key,
                          Read read, std::optional<T>* out) {
  T value{};
  TAILOR_RETURN_IF_ERROR(read(v, key, &value));
  *out = value;
  return absl::OkStatus();
}
template <typename E, typename Parse>
absl::Status ReadEnum(const nlohmann::json& v, absl::string_view key,
                      Parse parse, E* out) {
  std::string s;
  TAILOR_RETURN_IF_ERROR(ReadString(v, key, &s));
  TAILOR_ASSIGN_OR_RETURN(*out, parse(s));
  return absl::OkStatus();
}

// The keys of FromJson's form, each once: its JSON type and how it is read
// into the spec. Job files (client/job_file.cc) convert by the same tables.
using TaskReader = absl::Status (*)(const nlohmann::json& v,
                                    absl::string_view key, TaskSpec* t);
struct TaskKey {
  absl::string_view key;
  SpecValue type;
  TaskReader read;
};
// A TaskReader from an expression in v (the value), k (the key), t (the
// task).
#define TAILOR_TASK_READER(call) \
  [](const nlohmann::json& v, absl::string_view k, TaskSpec* t) { return call; }
constexpr TaskKey kTaskKeys[] = {
    {"label", SpecValue::kString,
     TAILOR_TASK_READER(ReadString(v, k, &t->label))},
    {"finetuned", SpecValue::kString,
     TAILOR_TASK_READER(ReadString(v, k, &t->finetuned_uri))},
    {"patch", SpecValue::kString,
     TAILOR_TASK_READER(ReadString(v, k, &t->patch_uri))},
    {"hessians", SpecValue::kString,
     TAILOR_TASK_READER(ReadString(v, k, &t->hessian_uri))},
    {"keep", SpecValue::kNumber,
     TAILOR_TASK_READER(ReadOptional(v, k, ReadNumber, &t->keep_ratio))},
    {"omega", SpecValue::kNumber,
     TAILOR_TASK_READER(ReadOptional(v, k, ReadNumber, &t->omega))},
    {"weight", SpecValue::kNumber,
     TAILOR_TASK_READER(ReadOptional(v, k, ReadNumber, &t->weight))},
};
#undef TAILOR_TASK_READER

template <typename Key, size_t N>
const Key* FindKey(const Key (&table)[N], absl::string_view key) {
  for (const Key& k : table) {
    if (k.key == key) return &k;
  }
  return nullptr;
}

std::string TaskKeyList() {
  std::vector<absl::string_view> keys;
  for (const TaskKey& k : kTaskKeys) keys.push_back(k.key);
  return absl::StrJoin(keys, ", ");
}

absl::StatusOr<TaskSpec> TaskFromJson(const nlohmann::json& j,
                                      const std::string& field) {
  if (!j.is_object()) return WrongType(field, "an object");
  TaskSpec t;
  for (const auto& [key, v] : j.items()) {
    const std::string f = absl::StrCat(field, ".", KeyName(key));
    const TaskKey* k = FindKey(kTaskKeys, key);
    if (k == nullptr) {
      return FieldError(
          f, absl::StrCat("unknown key (allowed: ", TaskKeyList(), ")"));
    }
    TAILOR_RETURN_IF_ERROR(k->read(v, f, &t));
  }
  return t;
}

using SpecReader = absl::Status (*)(const nlohmann::json& v,
                                    absl::string_view key, FusionSpec* s);
struct SpecKey {
  absl::string_view key;
  SpecValue type;
  SpecReader read;
};
// A SpecReader from an expression in v (the value), k (the key), s (the
// spec).
#define TAILOR_SPEC_READER(call)                                    \
  [](const nlohmann::json& v, absl::string_view k, FusionSpec* s) { \
    return call;                                                    \
  }
constexpr SpecKey kSpecKeys[] = {
    {"pretrained", SpecValue::kString,
     TAILOR_SPEC_READER(ReadString(v, k, &s->pretrained_uri))},
    {"tasks", SpecValue::kTasks,
     [](const nlohmann::json& v, absl::string_view k, FusionSpec* s) {
       if (!v.is_array()) return WrongType(k, "a list of tasks");
       for (size_t i = 0; i < v.size(); ++i) {
         TAILOR_ASSIGN_OR_RETURN(
             TaskSpec t, TaskFromJson(v[i], absl::StrCat("tasks[", i, "]")));
         s->tasks.push_back(std::move(t));
       }
       return absl::OkStatus();
     }},
    {"method", SpecValue::kString,
     TAILOR_SPEC_READER(ReadEnum(v, k, ParseMethod, &s->method))},
    {"keep", SpecValue::kNumberOrNumbers,
     TAILOR_SPEC_READER(
         ReadNumberOrList(v, k, &s->tailor.keep_ratio, &s->gradients.keep))},
    {"omega", SpecValue::kNumberOrNumbers,
     TAILOR_SPEC_READER(
         ReadNumberOrList(v, k, &s->tailor.omega, &s->gradients.omega))},
    {"scope", SpecValue::kString,
     TAILOR_SPEC_READER(ReadEnum(v, k, ParseScope, &s->tailor.scope))},
    {"normalize", SpecValue::kString,
     TAILOR_SPEC_READER(
         ReadEnum(v, k, ParseNormalization, &s->tailor.normalization))},
    {"compensation", SpecValue::kString,
     TAILOR_SPEC_READER(
         ReadEnum(v, k, ParseCompensation, &s->tailor.compensation))},
    {"dead_columns", SpecValue::kString,
     TAILOR_SPEC_READER(
         ReadEnum(v, k, ParseDeadColumns, &s->tailor.dead_columns))},
    {"damp", SpecValue::kNumber,
     TAILOR_SPEC_READER(ReadNumber(v, k, &s->tailor.damp))},
    {"block_size", SpecValue::kInt64,
     TAILOR_SPEC_READER(ReadInt(v, k, &s->tailor.block_size))},
    {"float64", SpecValue::kBool,
     TAILOR_SPEC_READER(ReadBool(v, k, &s->tailor.float64))},
    {"aggregate", SpecValue::kString,
     TAILOR_SPEC_READER(ReadEnum(v, k, ParseAggregation, &s->aggregation))},
    {"lambda", SpecValue::kNumberOrNumbers,
     TAILOR_SPEC_READER(
         ReadNumberOrList(v, k, &s->lambda, &s->gradients.lambda))},
    {"density", SpecValue::kNumberOrNumbers,
     TAILOR_SPEC_READER(
         ReadNumberOrList(v, k, &s->density, &s->gradients.density))},
    {"drop", SpecValue::kNumber,
     TAILOR_SPEC_READER(ReadNumber(v, k, &s->drop))},
    {"seed", SpecValue::kUint64, TAILOR_SPEC_READER(ReadInt(v, k, &s->seed))},
    {"t", SpecValue::kNumberOrNumbers,
     TAILOR_SPEC_READER(ReadNumberOrList(v, k, &s->t, &s->gradients.t))},
    {"gamma", SpecValue::kNumber,
     TAILOR_SPEC_READER(ReadNumber(v, k, &s->gamma))},
    {"epsilon", SpecValue::kNumber,
     TAILOR_SPEC_READER(ReadNumber(v, k, &s->epsilon))},
    {"normalize_weights", SpecValue::kBool,
     TAILOR_SPEC_READER(ReadOptional(v, k, ReadBool, &s->normalize_weights))},
    {"count_rule", SpecValue::kString,
     TAILOR_SPEC_READER(ReadEnum(v, k, ParseCountRule, &s->count_rule))},
    {"sign_cancel", SpecValue::kString,
     TAILOR_SPEC_READER(ReadEnum(v, k, ParseSignCancel, &s->sign_cancel))},
    {"variant", SpecValue::kString,
     TAILOR_SPEC_READER(ReadEnum(v, k, ParseVariant, &s->tailor.variant))},
    {"include", SpecValue::kStrings,
     TAILOR_SPEC_READER(ReadStrings(v, k, &s->include))},
    {"exclude", SpecValue::kStrings,
     TAILOR_SPEC_READER(ReadStrings(v, k, &s->exclude))},
    {"on_mismatch", SpecValue::kString,
     TAILOR_SPEC_READER(ReadEnum(v, k, ParseMismatchPolicy, &s->on_mismatch))},
    {"out", SpecValue::kString,
     TAILOR_SPEC_READER(ReadString(v, k, &s->output_uri))},
    {"patch_out", SpecValue::kString,
     TAILOR_SPEC_READER(ReadString(v, k, &s->patch_uri))},
    {"report", SpecValue::kString,
     TAILOR_SPEC_READER(ReadString(v, k, &s->report_uri))},
    {"overwrite", SpecValue::kBool,
     TAILOR_SPEC_READER(ReadBool(v, k, &s->overwrite))},
    {"device", SpecValue::kString,
     TAILOR_SPEC_READER(ReadString(v, k, &s->device))},
    {"threads", SpecValue::kInt,
     TAILOR_SPEC_READER(ReadInt(v, k, &s->threads))},
};
#undef TAILOR_SPEC_READER

// Whether `method` reads the per-task weights.
bool UsesWeights(Method method) {
  switch (method) {
    case Method::kLinear:
    case Method::kTaskArithmetic:
    case Method::kTies:
    case Method::kDareTies:
    case Method::kBreadcrumbs:
    case Method::kDella:
      return true;
    default:
      return false;
  }
}

// The rules of the mergekit-family fields (weight, t, gamma, epsilon,
// normalize_weights), each naming its field.
absl::Status ValidateMergekitFields(const FusionSpec& s) {
  double weight_sum = 0;
  for (size_t i = 0; i < s.tasks.size(); ++i) {
    const std::optional<double>& w = s.tasks[i].weight;
    weight_sum += w.value_or(1.0);
    if (!w) continue;
    const std::string field = absl::StrCat("tasks[", i, "].weight");
    if (!std::isfinite(*w)) return FieldError(field, "must be a finite number");
    if (!UsesWeights(s.method)) {
      return FieldError(
          field,
          absl::StrCat("is used only by methods linear, task_arithmetic, ties, "
                       "dare_ties, breadcrumbs and della, not ",
                       MethodName(s.method)));
    }
  }
  if (UsesWeights(s.method) && s.NormalizeWeights() &&
      std::fabs(weight_sum) < 1e-8) {
    return FieldError(
        "weight",
        absl::StrCat("the task weights sum to ", weight_sum,
                     ": they cannot be normalised (set normalize_weights: "
                     "false, or change a weight)"));
  }
  if (!(s.t >= 0 && s.t <= 1)) return FieldError("t", "must be in [0, 1]");
  if (s.method == Method::kSlerp && s.tasks.size() != 1) {
    return FieldError(
        "method",
        absl::StrCat("slerp interpolates between the pretrained checkpoint and "
                     "exactly one task, not ",
                     s.tasks.size()));
  }
  if (s.method == Method::kModelStock && s.tasks.size() < 2) {
    return FieldError("method",
                      "model_stock needs at least two tasks (the angle "
                      "between their task vectors)");
  }
  if (!(s.gamma >= 0 && s.gamma < 1)) {
    return FieldError("gamma", "must be in [0, 1)");
  }
  if (!(s.epsilon >= 0 && s.epsilon < 1)) {
    return FieldError("epsilon", "must be in [0, 1)");
  }
  if (s.method == Method::kDella && s.density < 1 &&
      !(s.density - s.epsilon > 0 && s.density + s.epsilon <= 1)) {
    return FieldError(
        "epsilon",
        absl::StrCat("della keeps entries with probabilities density +- "
                     "epsilon, which must lie in (0, 1]; density ",
                     s.density, ", epsilon ", s.epsilon));
  }
  return absl::OkStatus();
}

}  // namespace

bool FusionSpec::NormalizeWeights() const {
  if (normalize_weights) return *normalize_weights;
  return method == Method::kLinear || method == Method::kTies ||
         method == Method::kDella;
}

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
  if (!gradients.empty()) {
    // Each list's values (every anchor), then the rest with the lists'
    // first values: the scalars they replace are not used.
    TAILOR_RETURN_IF_ERROR(ValidateGradients(*this));
    return SpecAtPosition(*this, 0).Validate();
  }
  if (pretrained_uri.empty()) return FieldError("pretrained", "is required");
  if (tasks.empty()) {
    return FieldError(
        "tasks", "at least one fine-tuned checkpoint or patch is required");
  }
  if (output_uri.empty() && patch_uri.empty() && report_uri.empty()) {
    return FieldError(
        "outputs",
        "name at least one of out (fused checkpoint), patch_out, report");
  }
  TAILOR_RETURN_IF_ERROR(CheckUri(pretrained_uri, "pretrained"));
  TAILOR_RETURN_IF_ERROR(CheckUri(output_uri, "out"));
  TAILOR_RETURN_IF_ERROR(CheckUri(patch_uri, "patch_out"));
  TAILOR_RETURN_IF_ERROR(CheckUri(report_uri, "report"));
  TAILOR_RETURN_IF_ERROR(tailor.Validate());
  if (tailor.variant != Variant::kPaper && method != Method::kTailor) {
    return FieldError("variant",
                      absl::StrCat("authors-code is a variant of method "
                                   "tailor, not ",
                                   MethodName(method)));
  }
  std::set<std::string> labels;
  for (size_t i = 0; i < tasks.size(); ++i) {
    const TaskSpec& t = tasks[i];
    const std::string field = absl::StrCat("tasks[", i, "]");
    if (t.finetuned_uri.empty() == t.patch_uri.empty()) {
      return FieldError(field,
                        "exactly one of finetuned and patch must be set");
    }
    TAILOR_RETURN_IF_ERROR(
        CheckUri(t.finetuned_uri, absl::StrCat(field, ".finetuned")));
    TAILOR_RETURN_IF_ERROR(
        CheckUri(t.patch_uri, absl::StrCat(field, ".patch")));
    TAILOR_RETURN_IF_ERROR(
        CheckUri(t.hessian_uri, absl::StrCat(field, ".hessians")));
    TAILOR_RETURN_IF_ERROR(CheckUtf8(t.label, absl::StrCat(field, ".label")));
    if (t.label.size() > kMaxLabelBytes) {
      return FieldError(
          absl::StrCat(field, ".label"),
          absl::StrCat(Quote(t.label), " is longer than the limit of ",
                       kMaxLabelBytes, " bytes"));
    }
    if (!t.label.empty() && !labels.insert(t.label).second) {
      return FieldError(absl::StrCat(field, ".label"),
                        absl::StrCat(Quote(t.label), " is used twice"));
    }
    for (char c : t.label) {
      if (!(std::isalnum(static_cast<unsigned char>(c)) || c == '-' ||
            c == '_' || c == '.')) {
        return FieldError(absl::StrCat(field, ".label"),
                          "may contain only letters, digits, '-', '_' and '.'");
      }
    }
    if (t.keep_ratio && !(*t.keep_ratio > 0 && *t.keep_ratio <= 1)) {
      return FieldError(absl::StrCat(field, ".keep"), "must be in (0, 1]");
    }
    if (t.omega && !(*t.omega >= 0 && *t.omega <= 1)) {
      return FieldError(absl::StrCat(field, ".omega"), "must be in [0, 1]");
    }
    if (!t.patch_uri.empty() && method != Method::kTailor &&
        method != Method::kMagnitude) {
      return FieldError(
          field,
          "patch tasks can only be stitched (method tailor or magnitude)");
    }
    if (!t.patch_uri.empty() && !t.hessian_uri.empty()) {
      return FieldError(field,
                        "a patch task takes no hessians (the patch is final)");
    }
    if (!t.hessian_uri.empty() && method != Method::kTailor) {
      return FieldError(
          field, absl::StrCat("hessians are used only by method tailor, not ",
                              MethodName(method)));
    }
  }
  if (method == Method::kSpider && tasks.size() != 1) {
    return FieldError("method", "spider merges exactly one task");
  }
  if (!(lambda > 0) || !std::isfinite(lambda)) {
    return FieldError("lambda", "must be a finite number > 0");
  }
  if (!(density > 0 && density <= 1))
    return FieldError("density", "must be in (0, 1]");
  if (!(drop >= 0 && drop < 1)) return FieldError("drop", "must be in [0, 1)");
  TAILOR_RETURN_IF_ERROR(ValidateMergekitFields(*this));
  if (threads < 0 || threads > kMaxThreads) {
    return FieldError("threads",
                      absl::StrCat("must be in [0, ", kMaxThreads, "], not ",
                                   threads, " (0: the LibTorch default)"));
  }
  TAILOR_RETURN_IF_ERROR(CheckUtf8(device, "device"));
  for (size_t i = 0; i < include.size(); ++i) {
    TAILOR_RETURN_IF_ERROR(
        CheckUtf8(include[i], absl::StrCat("include[", i, "]")));
  }
  for (size_t i = 0; i < exclude.size(); ++i) {
    TAILOR_RETURN_IF_ERROR(
        CheckUtf8(exclude[i], absl::StrCat("exclude[", i, "]")));
  }
  if (device != "auto" && device != "cpu" && device != "cuda" &&
      device.rfind("cuda:", 0) != 0) {
    return FieldError(
        "device",
        absl::StrCat("must be auto, cpu, cuda or cuda:N, not ", Quote(device)));
  }
  return TensorFilter::Compile(*this).status();
}

absl::StatusOr<TensorFilter> TensorFilter::Compile(const FusionSpec& spec) {
  TensorFilter f;
  TAILOR_ASSIGN_OR_RETURN(f.include_, CompileRegexes(spec.include, "include"));
  TAILOR_ASSIGN_OR_RETURN(f.exclude_, CompileRegexes(spec.exclude, "exclude"));
  return f;
}

bool TensorFilter::Included(absl::string_view name) const {
  if (include_.empty()) return true;
  for (const Regex& re : include_) {
    if (re.Search(name)) return true;
  }
  return false;
}

bool TensorFilter::Excluded(absl::string_view name) const {
  for (const Regex& re : exclude_) {
    if (re.Search(name)) return true;
  }
  return false;
}

nlohmann::json FusionSpec::ToJson(bool with_overwrite) const {
  nlohmann::json j;
  if (with_overwrite) j["overwrite"] = overwrite;
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
    if (t.weight) tj["weight"] = *t.weight;
    ts.push_back(tj);
  }
  j["tasks"] = ts;
  j["keep"] = tailor.keep_ratio;
  j["omega"] = tailor.omega;
  j["scope"] = std::string(ScopeName(tailor.scope));
  j["normalize"] = std::string(NormalizationName(tailor.normalization));
  j["compensation"] = std::string(CompensationName(tailor.compensation));
  j["dead_columns"] = std::string(DeadColumnsName(tailor.dead_columns));
  j["damp"] = tailor.damp;
  j["block_size"] = tailor.block_size;
  j["float64"] = tailor.float64;
  j["aggregate"] = std::string(AggregationName(aggregation));
  j["lambda"] = lambda;
  j["density"] = density;
  j["drop"] = drop;
  j["seed"] = seed;
  // The mergekit-family keys (issue #19) only when they differ from their
  // defaults, so that the JSON of a spec that does not use them, and with it
  // request fingerprints (request_id) and journal identities recorded before
  // they existed, stays unchanged.
  const FusionSpec defaults;
  if (t != defaults.t) j["t"] = t;
  if (gamma != defaults.gamma) j["gamma"] = gamma;
  if (epsilon != defaults.epsilon) j["epsilon"] = epsilon;
  if (normalize_weights) j["normalize_weights"] = *normalize_weights;
  if (count_rule != defaults.count_rule) {
    j["count_rule"] = std::string(CountRuleName(count_rule));
  }
  if (sign_cancel != defaults.sign_cancel) {
    j["sign_cancel"] = std::string(SignCancelName(sign_cancel));
  }
  // The same for the variant (issue #19 point 5): specs of the paper's
  // Model Tailor keep their JSON.
  if (tailor.variant != defaults.tailor.variant) {
    j["variant"] = std::string(VariantName(tailor.variant));
  }
  j["include"] = include;
  j["exclude"] = exclude;
  j["on_mismatch"] = std::string(MismatchPolicyName(on_mismatch));
  j["out"] = output_uri;
  j["patch_out"] = patch_uri;
  j["report"] = report_uri;
  j["device"] = device;
  j["threads"] = threads;
  GradientsToJson(*this, &j);  // lists over their keys' scalars
  return j;
}

absl::StatusOr<FusionSpec> FusionSpec::FromJson(const nlohmann::json& j) {
  if (!j.is_object()) return WrongType("spec", "a JSON object");
  FusionSpec s;
  for (const auto& [key, v] : j.items()) {
    const SpecKey* k = FindKey(kSpecKeys, key);
    if (k == nullptr) return FieldError(KeyName(key), "unknown key");
    TAILOR_RETURN_IF_ERROR(k->read(v, key, &s));
  }
  ApplyVariantDefaults(
      [&](absl::string_view key) { return j.contains(std::string(key)); },
      &s.tailor);
  return s;
}

std::optional<SpecValue> SpecKeyValue(absl::string_view key) {
  const SpecKey* k = FindKey(kSpecKeys, key);
  if (k == nullptr) return std::nullopt;
  return k->type;
}

std::optional<SpecValue> TaskKeyValue(absl::string_view key) {
  const TaskKey* k = FindKey(kTaskKeys, key);
  if (k == nullptr) return std::nullopt;
  return k->type;
}

std::string TaskKeyNames() { return TaskKeyList(); }

}  // namespace tailor
