#include "demo/demo_baselines.h"

#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_join.h"

namespace tailor {
namespace {

FusionSpec Base() {
  FusionSpec base;
  base.pretrained_uri = "/demo/pretrained";
  base.output_uri = "/demo/fused";
  return base;
}

TaskSpec Task(const std::string& label) {
  TaskSpec t;
  t.label = label;
  t.finetuned_uri = "/demo/ft-" + label;
  t.hessian_uri = "/demo/ft-" + label + ".hessians";
  return t;
}

std::vector<std::string> Labels(const std::vector<DemoBaseline>& rows) {
  std::vector<std::string> labels;
  for (const DemoBaseline& row : rows) labels.push_back(row.label);
  return labels;
}

const DemoBaseline& Row(const std::vector<DemoBaseline>& rows,
                        const std::string& label) {
  for (const DemoBaseline& row : rows) {
    if (row.label == label) return row;
  }
  ADD_FAILURE() << "no row " << label << " in "
                << absl::StrJoin(Labels(rows), ", ");
  return rows.front();
}

TEST(DemoBaselinesTest, SingleTaskHasEveryMethodButModelStock) {
  const DemoPreset preset = FullDemoPreset();
  const auto rows =
      SingleTaskBaselines(preset, Base(), Task("B"), "full", true);
  EXPECT_EQ(Labels(rows), (std::vector<std::string>{
                              "dare", "ties", "task arithmetic", "linear",
                              "slerp", "dare_ties", "breadcrumbs", "della"}));
  for (const DemoBaseline& row : rows) {
    SCOPED_TRACE(row.label);
    // Each job would be accepted as it stands (DELLA's epsilon fits its
    // density, SLERP has one task, ...), and no baseline reads Hessians.
    EXPECT_TRUE(row.spec.Validate().ok()) << row.spec.Validate();
    EXPECT_TRUE(absl::StartsWith(row.slug, "full-")) << row.slug;
    for (const TaskSpec& t : row.spec.tasks) EXPECT_EQ(t.hessian_uri, "");
  }
  // Without the mergekit family: the original three, unchanged.
  EXPECT_EQ(
      Labels(SingleTaskBaselines(preset, Base(), Task("B"), "partial", false)),
      (std::vector<std::string>{"dare", "ties", "task arithmetic"}));
}

// The sparse methods get Model Tailor's budget, the others their documented
// parameters.
TEST(DemoBaselinesTest, ParametersAreTheDocumentedOnes) {
  const DemoPreset preset = FullDemoPreset();
  const auto rows =
      SingleTaskBaselines(preset, Base(), Task("B"), "full", true);
  for (const char* sparse : {"ties", "breadcrumbs", "della"}) {
    EXPECT_EQ(Row(rows, sparse).spec.density, preset.keep) << sparse;
  }
  for (const char* dropping : {"dare", "dare_ties"}) {
    EXPECT_NEAR(1 - Row(rows, dropping).spec.drop, preset.keep, 1e-12)
        << dropping;
  }
  EXPECT_EQ(Row(rows, "task arithmetic").spec.lambda,
            preset.task_arithmetic_lambda);
  EXPECT_EQ(Row(rows, "ties").spec.lambda, 1.0);
  EXPECT_EQ(Row(rows, "slerp").spec.method, Method::kSlerp);
  EXPECT_EQ(Row(rows, "slerp").spec.t, 0.5);
  EXPECT_EQ(Row(rows, "breadcrumbs").spec.gamma, 0.01);
  EXPECT_EQ(Row(rows, "della").spec.epsilon, preset.della_epsilon);
  // FusionSpec's default epsilon (0.15) does not fit density 0.1: the demo
  // needs its own.
  FusionSpec della = Row(rows, "della").spec;
  della.epsilon = FusionSpec().epsilon;
  EXPECT_FALSE(della.Validate().ok());
  // Linear merges the pretrained checkpoint with the task, 1:1, normalised.
  const FusionSpec& linear = Row(rows, "linear").spec;
  ASSERT_EQ(linear.tasks.size(), 2u);
  EXPECT_EQ(linear.tasks[0].finetuned_uri, Base().pretrained_uri);
  EXPECT_EQ(linear.tasks[1].finetuned_uri, Task("B").finetuned_uri);
  EXPECT_TRUE(linear.NormalizeWeights());
}

TEST(DemoBaselinesTest, MultiTaskHasEveryMethodButSlerp) {
  const DemoPreset preset = FullDemoPreset();
  const auto rows =
      MultiTaskBaselines(preset, Base(), {Task("B"), Task("C")}, " B+C");
  EXPECT_EQ(Labels(rows), (std::vector<std::string>{
                              "dare B+C", "ties B+C", "task arithmetic B+C",
                              "linear B+C", "dare_ties B+C", "breadcrumbs B+C",
                              "della B+C", "model_stock B+C"}));
  for (const DemoBaseline& row : rows) {
    SCOPED_TRACE(row.label);
    EXPECT_TRUE(row.spec.Validate().ok()) << row.spec.Validate();
    EXPECT_EQ(row.spec.tasks.size(), 2u);
    EXPECT_TRUE(absl::StartsWith(row.slug, "multi-")) << row.slug;
  }
  // The original rows keep their slugs (and so their fused folders).
  EXPECT_EQ(rows[0].slug, "multi-dare");
  EXPECT_EQ(rows[2].slug, "multi-task-arithmetic");
}

TEST(DemoBaselinesTest, NotesStateEveryMethodsParameters) {
  const std::string notes =
      absl::StrJoin(BaselineNotes(FullDemoPreset()), "\n");
  for (const char* text :
       {"ties", "breadcrumbs", "della", "dare_ties", "linear", "slerp: t = 0.5",
        "model_stock: multi-task only", "gamma = 1%", "10% +- 5%",
        "task arithmetic: lambda = 0.5"}) {
    EXPECT_TRUE(absl::StrContains(notes, text)) << text << "\n" << notes;
  }
}

}  // namespace
}  // namespace tailor
