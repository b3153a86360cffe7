// tailorctl's output formats, without a server: `get -o job` round-trips
// through the job-file parser; progress text labels bytes and tensors.

#include "client/job_output.h"

#include <gtest/gtest.h>

#include "absl/strings/match.h"
#include "api/spec_convert.h"
#include "client/job_file.h"
#include "client/progress_bar.h"
#include "testing/temp_dir.h"
#include "util/file_util.h"

namespace tailor::cli {
namespace {

namespace v1 = ::tailor::v1;
using ::tailor::testing::TempDir;

// A spec as the server returns it: defaults filled in (the engine's full
// form), every kind of value (enums, int64, floats, lists, tasks).
v1::FusionJobSpec ServerSpec() {
  nlohmann::json json = {
      {"pretrained", "/data/base"},
      {"method", "tailor"},
      {"keep", 0.1},
      {"omega", 0.75},
      {"density", {0.9, 0.5, 0.1}},  // a list over the layers
      {"seed", uint64_t{1234567890123}},
      {"include", {"m\\.l[0-9]+\\..*", "lm_head.weight"}},
      {"tasks",
       {{{"label", "code"},
         {"finetuned", "/data/ft code"},
         {"hessians", "/data/h.safetensors"},
         {"keep", 0.3}},
        {{"label", "math"}, {"patch", "/data/math.patch.safetensors"}}}},
      {"out", "/data/out/fused"},
      {"patch_out", "/data/p.safetensors"},
      {"overwrite", true},
      {"device", "cpu"}};
  absl::StatusOr<FusionSpec> spec = FusionSpec::FromJson(json);
  EXPECT_TRUE(spec.ok()) << spec.status();
  absl::StatusOr<v1::FusionJobSpec> proto =
      api::SpecFromJson(spec->ToJson(/*with_overwrite=*/true));
  EXPECT_TRUE(proto.ok()) << proto.status();
  return *proto;
}

TEST(JobOutputTest, GetAsJobFileRoundTripsThroughTheJobFileParser) {
  const v1::FusionJobSpec spec = ServerSpec();
  const std::string text = FormatJobFile(spec);
  EXPECT_FALSE(absl::StrContains(text, "METHOD_")) << text;
  EXPECT_TRUE(absl::StrContains(text, "method: tailor") ||
              absl::StrContains(text, "method: \"tailor\""))
      << text;
  EXPECT_TRUE(absl::StrContains(text, "seed: 1234567890123")) << text;
  EXPECT_EQ(spec.layer_gradients().density_size(), 3);
  TempDir dir;
  const std::string path = dir.Join("job.yaml");
  ASSERT_TRUE(WriteFileAtomically(path, text).ok());
  absl::StatusOr<nlohmann::json> loaded = LoadJobFileJson(path);
  ASSERT_TRUE(loaded.ok()) << loaded.status() << "\n" << text;
  absl::StatusOr<v1::FusionJobSpec> again = api::SpecFromJson(*loaded);
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_EQ(again->SerializeAsString(), spec.SerializeAsString())
      << again->DebugString() << "\nvs\n"
      << spec.DebugString();
}

TEST(JobOutputTest, DetailViewShowsEverythingAndTheSpec) {
  v1::FusionJob job;
  job.set_name("fusionJobs/0123456789abcdef");
  job.set_state(v1::FAILED);
  job.set_priority(3);
  (*job.mutable_labels())["team"] = "qa";
  job.mutable_create_time()->set_seconds(1700000000);
  job.mutable_start_time()->set_seconds(1700000001);
  job.mutable_end_time()->set_seconds(1700000002);
  job.mutable_progress()->set_tensors_done(2);
  job.mutable_progress()->set_tensors_total(4);
  job.mutable_progress()->set_bytes_done(10);
  job.mutable_progress()->set_bytes_total(40);
  job.set_error_code(5);
  job.set_error_message("pretrained: gone");
  *job.mutable_spec() = ServerSpec();
  const std::string text = FormatJobDetail(job);
  for (const char* want :
       {"Name:        fusionJobs/0123456789abcdef", "State:       FAILED",
        "Priority:    3", "Labels:      team=qa",
        "Created:     2023-11-14T22:13:20Z",
        "Started:", "Ended:", "Progress:    2/4 tensors, 25% of base bytes",
        "Error:       NOT_FOUND: pretrained: gone", "Spec (",
        "  pretrained:"}) {
    EXPECT_TRUE(absl::StrContains(text, want)) << want << "\n" << text;
  }
  // No creator field reported: no line for it.
  EXPECT_FALSE(absl::StrContains(text, "Creator:")) << text;
}

TEST(JobOutputTest, ProgressTextLabelsBytesAndTensors) {
  ProgressEvent e;
  e.kind = ProgressEvent::Kind::kTensorDone;
  e.done = 3;
  e.total = 10;
  e.bytes_done = 50;
  e.bytes_total = 100;
  e.tensor = "m.l0.weight";
  const std::string bar = ProgressBarText(e);
  EXPECT_TRUE(absl::StrContains(bar, " 50% of bytes, 3/10 tensors")) << bar;

  v1::JobEvent event;
  event.set_sequence(7);
  event.mutable_progress()->set_tensors_done(3);
  event.mutable_progress()->set_tensors_total(10);
  event.mutable_progress()->set_bytes_done(50);
  event.mutable_progress()->set_bytes_total(100);
  event.mutable_progress()->set_eta_seconds(-1);
  const std::string line = FormatEvent(event, OutputFormat::kTable);
  EXPECT_TRUE(
      absl::StrContains(line, "progress 3/10 tensors, 50% of base bytes"))
      << line;
}

// Issue #19 point 5: variant authors-code through the proto (field 33),
// `get -o job` and a hand-written job file.
TEST(JobOutputTest, AuthorsCodeVariantRoundTripsThroughProtoAndJobFiles) {
  absl::StatusOr<FusionSpec> spec = FusionSpec::FromJson(
      {{"pretrained", "/b"},
       {"tasks", {{{"finetuned", "/f"}, {"hessians", "/h"}}}},
       {"out", "/o"},
       {"variant", "authors-code"}});
  ASSERT_TRUE(spec.ok()) << spec.status();
  const nlohmann::json j = spec->ToJson(/*with_overwrite=*/true);
  absl::StatusOr<v1::FusionJobSpec> proto = api::SpecFromJson(j);
  ASSERT_TRUE(proto.ok()) << proto.status();
  EXPECT_EQ(proto->variant(), v1::VARIANT_AUTHORS_CODE);
  EXPECT_EQ(proto->scope(), v1::SCOPE_BLOCK);
  EXPECT_EQ(proto->omega(), 0.8);
  absl::StatusOr<FusionSpec> back =
      FusionSpec::FromJson(api::SpecToJson(*proto));
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_EQ(back->ToJson(/*with_overwrite=*/true), j);

  // A proto with the variant alone (what a gRPC client sends) gets the
  // variant's knobs from the engine.
  v1::FusionJobSpec bare;
  bare.set_pretrained("/b");
  bare.add_tasks()->set_finetuned("/f");
  bare.set_out("/o");
  bare.set_variant(v1::VARIANT_AUTHORS_CODE);
  back = FusionSpec::FromJson(api::SpecToJson(bare));
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_EQ(back->tailor.variant, Variant::kAuthorsCode);
  EXPECT_EQ(back->tailor.omega, 0.8);
  EXPECT_EQ(back->tailor.normalization, Normalization::kZScore);

  TempDir dir;
  const std::string path = dir.Join("job.yaml");
  ASSERT_TRUE(WriteFileAtomically(path, FormatJobFile(*proto)).ok());
  absl::StatusOr<FusionSpec> loaded = LoadJobFile(path);
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  EXPECT_EQ(loaded->ToJson(/*with_overwrite=*/true), j);

  ASSERT_TRUE(WriteFileAtomically(path,
                                  "pretrained: /b\n"
                                  "tasks:\n"
                                  "  - finetuned: /f\n"
                                  "out: /o\n"
                                  "variant: authors-code\n"
                                  "omega: 0.6\n")
                  .ok());
  loaded = LoadJobFile(path);
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  EXPECT_EQ(loaded->tailor.variant, Variant::kAuthorsCode);
  EXPECT_EQ(loaded->tailor.omega, 0.6);  // given: it wins
  EXPECT_EQ(loaded->tailor.scope, Scope::kBlock);

  ASSERT_TRUE(
      WriteFileAtomically(path, "pretrained: /b\nvariant: authors\n").ok());
  loaded = LoadJobFile(path);
  EXPECT_EQ(loaded.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(absl::StrContains(loaded.status().message(), "variant"))
      << loaded.status();
  absl::StatusOr<v1::FusionJobSpec> bad =
      api::SpecFromJson({{"variant", "bogus"}});
  ASSERT_FALSE(bad.ok());
  EXPECT_TRUE(absl::StrContains(bad.status().message(),
                                "variant: must be one of paper|authors_code"))
      << bad.status();
}

}  // namespace
}  // namespace tailor::cli
