// The job spec on its own: keys, JSON form, validation. Linked against
// tailor_spec only, so it also proves the spec needs no LibTorch.

#include "fusion/fusion_spec.h"

#include <cmath>
#include <string>

#include "absl/strings/match.h"
#include "gtest/gtest.h"

namespace tailor {
namespace {

FusionSpec FullSpec() {
  FusionSpec s;
  s.pretrained_uri = "base";
  TaskSpec a;
  a.label = "code";
  a.finetuned_uri = "ft";
  a.hessian_uri = "h.safetensors";
  a.keep_ratio = 0.3;
  a.omega = 0.25;
  TaskSpec b;
  b.patch_uri = "p.safetensors";
  s.tasks = {a, b};
  s.method = Method::kTailor;
  s.tailor.keep_ratio = 0.2;
  s.tailor.scope = Scope::kRow;
  s.tailor.normalization = Normalization::kZScore;
  s.tailor.compensation = Compensation::kExact;
  s.tailor.dead_columns = DeadColumns::kSelect;
  s.tailor.block_size = 64;
  s.tailor.float64 = true;
  s.aggregation = Aggregation::kSum;
  s.lambda = 0.5;
  s.density = 0.4;
  s.drop = 0.3;
  s.seed = 18446744073709551615ull;
  s.include = {"layers\\.0\\."};
  s.exclude = {"embed"};
  s.on_mismatch = MismatchPolicy::kCopyBase;
  s.output_uri = "out";
  s.patch_uri = "patch";
  s.report_uri = "report.json";
  s.overwrite = true;
  s.device = "cpu";
  s.threads = 7;
  return s;
}

void ExpectInvalid(const absl::Status& s, const std::string& text) {
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
  EXPECT_TRUE(absl::StrContains(s.message(), text)) << s;
}

TEST(FusionSpecTest, ToJsonFromJsonRoundTripsEveryKey) {
  const FusionSpec spec = FullSpec();
  ASSERT_TRUE(spec.Validate().ok()) << spec.Validate();
  const nlohmann::json j = spec.ToJson(/*with_overwrite=*/true);
  absl::StatusOr<FusionSpec> back = FusionSpec::FromJson(j);
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_EQ(back->ToJson(/*with_overwrite=*/true), j);
  EXPECT_TRUE(back->overwrite);
  EXPECT_EQ(back->seed, spec.seed);
  ASSERT_EQ(back->tasks.size(), 2u);
  EXPECT_EQ(back->tasks[0].keep_ratio, 0.3);
  EXPECT_EQ(back->tasks[1].patch_uri, "p.safetensors");
  EXPECT_FALSE(back->tasks[1].keep_ratio.has_value());
  // Every key ToJson writes is a key of the table, with its JSON type.
  for (const auto& [key, v] : j.items()) {
    std::optional<SpecValue> type = SpecKeyValue(key);
    ASSERT_TRUE(type.has_value()) << key;
    switch (*type) {
      case SpecValue::kString:
        EXPECT_TRUE(v.is_string()) << key;
        break;
      case SpecValue::kNumber:
        EXPECT_TRUE(v.is_number()) << key;
        break;
      case SpecValue::kNumberOrNumbers:
        EXPECT_TRUE(v.is_number() || v.is_array()) << key;
        break;
      case SpecValue::kBool:
        EXPECT_TRUE(v.is_boolean()) << key;
        break;
      case SpecValue::kInt:
      case SpecValue::kInt64:
      case SpecValue::kUint64:
        EXPECT_TRUE(v.is_number_integer()) << key;
        break;
      case SpecValue::kStrings:
      case SpecValue::kTasks:
        EXPECT_TRUE(v.is_array()) << key;
        break;
    }
  }
  for (const auto& [key, v] : j["tasks"][0].items()) {
    EXPECT_TRUE(TaskKeyValue(key).has_value()) << key;
  }
}

TEST(FusionSpecTest, OverwriteOnlyWithTheOption) {
  FusionSpec spec = FullSpec();
  EXPECT_FALSE(spec.ToJson().contains("overwrite"));
  EXPECT_EQ(spec.ToJson(/*with_overwrite=*/true)["overwrite"], true);
  spec.overwrite = false;
  EXPECT_EQ(spec.ToJson(/*with_overwrite=*/true)["overwrite"], false);
  // Apart from "overwrite" the two forms are the same.
  nlohmann::json with = spec.ToJson(/*with_overwrite=*/true);
  with.erase("overwrite");
  EXPECT_EQ(with, spec.ToJson());
}

TEST(FusionSpecTest, MissingKeysTakeTheDefaults) {
  absl::StatusOr<FusionSpec> s = FusionSpec::FromJson(nlohmann::json::object());
  ASSERT_TRUE(s.ok()) << s.status();
  EXPECT_EQ(s->ToJson(), FusionSpec().ToJson());
}

// Issue #17 point 9: dead columns are reverted unless the spec says select.
TEST(FusionSpecTest, DeadColumnsKnob) {
  EXPECT_EQ(FusionSpec().tailor.dead_columns, DeadColumns::kRevert);
  EXPECT_EQ(FusionSpec().ToJson()["dead_columns"], "revert");
  absl::StatusOr<FusionSpec> s =
      FusionSpec::FromJson({{"dead_columns", "select"}});
  ASSERT_TRUE(s.ok()) << s.status();
  EXPECT_EQ(s->tailor.dead_columns, DeadColumns::kSelect);
  ExpectInvalid(FusionSpec::FromJson({{"dead_columns", "keep"}}).status(),
                "dead_columns must be one of revert|select, not 'keep'");
}

TEST(FusionSpecTest, UnknownKeysAndWrongTypesNameTheKey) {
  ExpectInvalid(FusionSpec::FromJson({{"keep_ratio", 0.1}}).status(),
                "keep_ratio: unknown key");
  ExpectInvalid(FusionSpec::FromJson({{"keep", "0.1"}}).status(),
                "keep: must be a number");
  ExpectInvalid(FusionSpec::FromJson({{"float64", 1}}).status(),
                "float64: must be true or false");
  ExpectInvalid(FusionSpec::FromJson({{"seed", -1}}).status(),
                "seed: must be a non-negative integer");
  ExpectInvalid(FusionSpec::FromJson({{"block_size", 1.5}}).status(),
                "block_size: must be an integer");
  ExpectInvalid(FusionSpec::FromJson({{"include", "x"}}).status(),
                "include: must be a list of strings");
  ExpectInvalid(
      FusionSpec::FromJson({{"exclude", nlohmann::json::array({"a", 2})}})
          .status(),
      "exclude[1]: must be a string");
  ExpectInvalid(FusionSpec::FromJson({{"method", "average"}}).status(),
                "method");
  ExpectInvalid(FusionSpec::FromJson({{"aggregate", "max"}}).status(),
                "aggregate");
  ExpectInvalid(FusionSpec::FromJson(nlohmann::json::array()).status(),
                "spec: must be a JSON object");
  // A long unknown key is quoted and bounded.
  const std::string long_key(5000, 'k');
  absl::Status s = FusionSpec::FromJson({{long_key, 1}}).status();
  ExpectInvalid(s, "unknown key");
  EXPECT_LT(s.message().size(), 200u);
}

TEST(FusionSpecTest, TaskKeysAreCheckedWithTheirPath) {
  nlohmann::json j = {{"tasks", {{{"label", "a"}, {"density", 1}}}}};
  ExpectInvalid(
      FusionSpec::FromJson(j).status(),
      "tasks[0].density: unknown key (allowed: label, finetuned, patch, "
      "hessians, keep, omega, weight)");
  EXPECT_EQ(TaskKeyNames(),
            "label, finetuned, patch, hessians, keep, omega, weight");
  j = {{"tasks", {{{"omega", "half"}}}}};
  ExpectInvalid(FusionSpec::FromJson(j).status(),
                "tasks[0].omega: must be a number");
  j = {{"tasks", {"ft"}}};
  ExpectInvalid(FusionSpec::FromJson(j).status(),
                "tasks[0]: must be an object");
  j = {{"tasks", "ft"}};
  ExpectInvalid(FusionSpec::FromJson(j).status(),
                "tasks: must be a list of tasks");
}

TEST(FusionSpecTest, KeyTypesDriveJobFileConversion) {
  EXPECT_EQ(SpecKeyValue("threads"), SpecValue::kInt);
  EXPECT_EQ(SpecKeyValue("block_size"), SpecValue::kInt64);
  EXPECT_EQ(SpecKeyValue("seed"), SpecValue::kUint64);
  EXPECT_EQ(SpecKeyValue("include"), SpecValue::kStrings);
  EXPECT_EQ(SpecKeyValue("tasks"), SpecValue::kTasks);
  EXPECT_EQ(SpecKeyValue("overwrite"), SpecValue::kBool);
  EXPECT_EQ(SpecKeyValue("keep"), SpecValue::kNumberOrNumbers);
  EXPECT_EQ(SpecKeyValue("damp"), SpecValue::kNumber);
  EXPECT_EQ(SpecKeyValue("method"), SpecValue::kString);
  EXPECT_FALSE(SpecKeyValue("block-size").has_value());  // canonical only
  EXPECT_FALSE(SpecKeyValue("finetuned").has_value());   // job-file lists
  EXPECT_EQ(TaskKeyValue("keep"), SpecValue::kNumber);
  EXPECT_FALSE(TaskKeyValue("tasks").has_value());
}

TEST(FusionSpecTest, ValidateNamesTheField) {
  FusionSpec s = FullSpec();
  EXPECT_TRUE(s.Validate().ok());
  s.tasks[0].label = "bad label";
  ExpectInvalid(s.Validate(), "tasks[0].label");
  s = FullSpec();
  s.device = "tpu";
  ExpectInvalid(s.Validate(), "device: must be auto, cpu, cuda or cuda:N");
  s = FullSpec();
  s.include = {"("};
  ExpectInvalid(s.Validate(), "include[0]");
}

TEST(FusionSpecTest, TensorFilterIncludesAndExcludes) {
  FusionSpec s;
  absl::StatusOr<TensorFilter> all = TensorFilter::Compile(s);
  ASSERT_TRUE(all.ok());
  EXPECT_TRUE(all->Included("anything"));
  EXPECT_FALSE(all->Excluded("anything"));
  s.include = {"^layers\\.", "lm_head"};
  s.exclude = {"bias$"};
  absl::StatusOr<TensorFilter> f = TensorFilter::Compile(s);
  ASSERT_TRUE(f.ok()) << f.status();
  EXPECT_TRUE(f->Included("layers.0.weight"));
  EXPECT_TRUE(f->Included("model.lm_head.weight"));
  EXPECT_FALSE(f->Included("embed.weight"));
  EXPECT_TRUE(f->Excluded("layers.0.bias"));
}

}  // namespace
}  // namespace tailor

namespace tailor {
namespace {

FusionSpec MergekitSpec(Method method, int tasks) {
  FusionSpec s;
  s.pretrained_uri = "base";
  s.output_uri = "out";
  s.method = method;
  for (int i = 0; i < tasks; ++i) {
    TaskSpec t;
    t.finetuned_uri = "ft" + std::to_string(i);
    s.tasks.push_back(t);
  }
  return s;
}

// A spec that uses none of the mergekit-family keys has the JSON it had
// before they existed (request fingerprints and journal identities compare
// it), and still round-trips.
TEST(FusionSpecMergekitTest, DefaultsLeaveTheJsonAsBefore) {
  FusionSpec s = MergekitSpec(Method::kTies, 2);
  const nlohmann::json j = s.ToJson(true);
  for (const char* key : {"t", "gamma", "epsilon", "normalize_weights",
                          "count_rule", "sign_cancel"}) {
    EXPECT_FALSE(j.contains(key)) << key;
  }
  EXPECT_FALSE(j["tasks"][0].contains("weight"));
  absl::StatusOr<FusionSpec> back = FusionSpec::FromJson(j);
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_EQ(back->ToJson(true), j);
  s.t = 0.25;
  EXPECT_EQ(s.ToJson(true)["t"], 0.25);
}

TEST(FusionSpecMergekitTest, NewKeysRoundTrip) {
  FusionSpec s = MergekitSpec(Method::kDella, 2);
  s.tasks[0].weight = 0.25;
  s.t = 0.75;
  s.gamma = 0.05;
  s.epsilon = 0.1;
  s.normalize_weights = false;
  s.count_rule = CountRule::kFloor;
  s.sign_cancel = SignCancel::kPositive;
  ASSERT_TRUE(s.Validate().ok()) << s.Validate();
  const nlohmann::json j = s.ToJson(true);
  EXPECT_EQ(j["method"], "della");
  EXPECT_EQ(j["count_rule"], "floor");
  EXPECT_EQ(j["sign_cancel"], "positive");
  absl::StatusOr<FusionSpec> back = FusionSpec::FromJson(j);
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_EQ(back->ToJson(true), j);
  EXPECT_EQ(back->tasks[0].weight, 0.25);
  EXPECT_FALSE(back->tasks[1].weight.has_value());
  EXPECT_EQ(back->normalize_weights, false);
  for (const char* m : {"linear", "slerp", "dare_ties", "breadcrumbs", "della",
                        "model_stock"}) {
    absl::StatusOr<Method> parsed = ParseMethod(m);
    ASSERT_TRUE(parsed.ok()) << m;
    EXPECT_EQ(MethodName(*parsed), m);
  }
  EXPECT_FALSE(ParseCountRule("ceil").ok());
  EXPECT_FALSE(ParseSignCancel("negative").ok());
}

TEST(FusionSpecMergekitTest, NormalizeDefaultsFollowMergekit) {
  for (Method m : {Method::kLinear, Method::kTies, Method::kDella}) {
    EXPECT_TRUE(MergekitSpec(m, 1).NormalizeWeights()) << MethodName(m);
  }
  for (Method m :
       {Method::kTaskArithmetic, Method::kDareTies, Method::kBreadcrumbs}) {
    EXPECT_FALSE(MergekitSpec(m, 1).NormalizeWeights()) << MethodName(m);
  }
  FusionSpec s = MergekitSpec(Method::kLinear, 1);
  s.normalize_weights = false;
  EXPECT_FALSE(s.NormalizeWeights());
}

TEST(FusionSpecMergekitTest, BadValuesNameTheField) {
  FusionSpec s = MergekitSpec(Method::kLinear, 2);
  s.tasks[0].weight = 1;
  s.tasks[1].weight = -1;
  ExpectInvalid(s.Validate(), "weight: the task weights sum to 0");
  s.normalize_weights = false;
  EXPECT_TRUE(s.Validate().ok()) << s.Validate();

  s = MergekitSpec(Method::kLinear, 1);
  s.tasks[0].weight = std::nan("");
  ExpectInvalid(s.Validate(), "tasks[0].weight: must be a finite number");

  s = MergekitSpec(Method::kTailor, 1);
  s.tasks[0].weight = 2;
  ExpectInvalid(s.Validate(), "tasks[0].weight: is used only by");

  s = MergekitSpec(Method::kSlerp, 1);
  for (double t : {-0.1, 1.5, std::nan("")}) {
    s.t = t;
    ExpectInvalid(s.Validate(), "t: must be in [0, 1]");
  }
  s.t = 1;
  EXPECT_TRUE(s.Validate().ok());
  s = MergekitSpec(Method::kSlerp, 2);
  ExpectInvalid(s.Validate(), "method: slerp interpolates");
  s = MergekitSpec(Method::kSlerp, 1);
  s.tasks[0].weight = 2;
  ExpectInvalid(s.Validate(), "tasks[0].weight");

  s = MergekitSpec(Method::kModelStock, 1);
  ExpectInvalid(s.Validate(), "method: model_stock needs at least two");

  for (Method m : {Method::kDareTies, Method::kBreadcrumbs, Method::kDella,
                   Method::kTies}) {
    s = MergekitSpec(m, 2);
    for (double d : {0.0, -0.5, 1.5}) {
      s.density = d;
      ExpectInvalid(s.Validate(), "density: must be in (0, 1]");
    }
  }
  s = MergekitSpec(Method::kBreadcrumbs, 2);
  s.gamma = 1;
  ExpectInvalid(s.Validate(), "gamma: must be in [0, 1)");
  s = MergekitSpec(Method::kDella, 2);
  s.density = 0.1;
  s.epsilon = 0.15;
  ExpectInvalid(s.Validate(), "epsilon: della keeps entries");
  s.epsilon = 0.05;
  EXPECT_TRUE(s.Validate().ok()) << s.Validate();
}

// Issue #19 point 5: the authors'-code variant. Its knobs take the
// values of their code where not given; given ones win or are refused.
TEST(FusionSpecTest, AuthorsCodeVariantFillsItsKnobsAndRoundTrips) {
  // Absent: the paper, and no "variant" key (fingerprints unchanged).
  EXPECT_EQ(FusionSpec().tailor.variant, Variant::kPaper);
  EXPECT_FALSE(FusionSpec().ToJson().contains("variant"));
  nlohmann::json j = {{"pretrained", "b"},
                      {"tasks", {{{"finetuned", "f"}}}},
                      {"out", "o"},
                      {"variant", "authors-code"}};
  absl::StatusOr<FusionSpec> s = FusionSpec::FromJson(j);
  ASSERT_TRUE(s.ok()) << s.status();
  EXPECT_EQ(s->tailor.variant, Variant::kAuthorsCode);
  EXPECT_EQ(s->tailor.omega, 0.8);
  EXPECT_EQ(s->tailor.scope, Scope::kBlock);
  EXPECT_EQ(s->tailor.normalization, Normalization::kZScore);
  EXPECT_EQ(s->tailor.dead_columns, DeadColumns::kSelect);
  EXPECT_EQ(s->tailor.compensation, Compensation::kSequential);
  EXPECT_TRUE(s->Validate().ok()) << s->Validate();
  const nlohmann::json out = s->ToJson(/*with_overwrite=*/true);
  EXPECT_EQ(out["variant"], "authors-code");
  absl::StatusOr<FusionSpec> back = FusionSpec::FromJson(out);
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_EQ(back->ToJson(/*with_overwrite=*/true), out);
  // The proto enum's spelling reads the same.
  j["variant"] = "authors_code";
  s = FusionSpec::FromJson(j);
  ASSERT_TRUE(s.ok()) << s.status();
  EXPECT_EQ(s->tailor.variant, Variant::kAuthorsCode);
  // An explicit omega wins; "paper" changes nothing.
  j["omega"] = 0.3;
  s = FusionSpec::FromJson(j);
  ASSERT_TRUE(s.ok()) << s.status();
  EXPECT_EQ(s->tailor.omega, 0.3);
  EXPECT_EQ(s->tailor.scope, Scope::kBlock);
  j.erase("omega");
  j["variant"] = "paper";
  s = FusionSpec::FromJson(j);
  ASSERT_TRUE(s.ok()) << s.status();
  EXPECT_EQ(s->ToJson(), [] {
    FusionSpec d;
    d.pretrained_uri = "b";
    d.tasks.resize(1);
    d.tasks[0].finetuned_uri = "f";
    d.output_uri = "o";
    return d.ToJson();
  }());
  ExpectInvalid(FusionSpec::FromJson({{"variant", "authors"}}).status(),
                "variant must be one of paper|authors-code, not 'authors'");
  ExpectInvalid(FusionSpec::FromJson({{"variant", 2}}).status(),
                "variant: must be a string");
}

TEST(FusionSpecTest, AuthorsCodeVariantRefusesWhatItsCodeDoesNotDo) {
  nlohmann::json base = {{"pretrained", "b"},
                         {"tasks", {{{"finetuned", "f"}}}},
                         {"out", "o"},
                         {"variant", "authors-code"}};
  auto invalid = [&](const nlohmann::json& extra, const std::string& text) {
    nlohmann::json j = base;
    j.update(extra);
    absl::StatusOr<FusionSpec> s = FusionSpec::FromJson(j);
    ASSERT_TRUE(s.ok()) << s.status();
    ExpectInvalid(s->Validate(), text);
  };
  invalid({{"compensation", "exact"}},
          "compensation must be sequential with variant authors-code");
  invalid({{"compensation", "none"}}, "not 'none'");
  invalid({{"scope", "layer"}},
          "scope must be block with variant authors-code");
  invalid({{"normalize", "minmax"}},
          "normalize must be zscore with variant authors-code");
  invalid({{"dead_columns", "revert"}},
          "dead_columns must be select with variant authors-code");
  invalid({{"method", "magnitude"}},
          "variant: authors-code is a variant of method tailor, not "
          "magnitude");
  invalid({{"method", "ties"}}, "variant: authors-code");
  // The knobs it does allow.
  nlohmann::json ok = base;
  ok.update({{"scope", "block"},
             {"block_size", 64},
             {"float64", true},
             {"keep", 0.3},
             {"damp", 0.1}});
  absl::StatusOr<FusionSpec> s = FusionSpec::FromJson(ok);
  ASSERT_TRUE(s.ok()) << s.status();
  EXPECT_TRUE(s->Validate().ok()) << s->Validate();
}

}  // namespace
}  // namespace tailor
