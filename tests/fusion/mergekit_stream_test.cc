// The elementwise mergekit-family methods stream each tensor
// (FusionRun::StreamMergekit; SLERP and Model Stock in two passes) when the
// fused checkpoint is the only output; with a patch output they are
// computed whole (FuseOne, MergekitMerge). Both must give the same bytes
// and report rows for any chunk size, task count, compute precision and
// stored dtype. Breadcrumbs and DELLA are always computed whole; a job
// with them must still run.

#include <ATen/ATen.h>
#include <gtest/gtest.h>
#include <sys/stat.h>

#include <map>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "fusion/fusion_job.h"
#include "io/checkpoint.h"
#include "testing/test_util.h"

namespace tailor {
namespace {

using ::tailor::testing::ExpectSameFiles;
using ::tailor::testing::RawTensor;
using ::tailor::testing::TempDir;
using ::tailor::testing::ToRaw;
using ::tailor::testing::WriteShardedCheckpoint;

class MergekitStreamTest : public ::testing::Test {
 protected:
  void SetUp() override {
    at::manual_seed(23);
    std::map<std::string, at::Tensor> pre = {{"a.weight", at::randn({30, 41})},
                                             {"b.weight", at::randn({7, 13})},
                                             {"d.weight", at::randn({6, 6})},
                                             {"norm.weight", at::randn({41})}};
    for (int t = 0; t < 3; ++t) {
      std::map<std::string, at::Tensor> ft;
      for (const auto& [name, w] : pre) {
        ft[name] = w + 0.3 * at::randn(w.sizes()) + 0.1 * w;
      }
      ft["d.weight"] = pre["d.weight"];  // a zero task vector
      fts_.push_back(ft);
    }
    for (at::ScalarType type : {at::kBFloat16, at::kFloat}) {
      const std::string tag = type == at::kFloat ? "f32" : "bf16";
      Write(Dir("base-" + tag), pre, type);
      for (int t = 0; t < 3; ++t) {
        Write(Dir(absl::StrCat("ft", t, "-", tag)), fts_[t], type);
      }
    }
  }

  std::string Dir(const std::string& name) {
    const std::string p = tmp_.Join(name);
    ::mkdir(p.c_str(), 0755);
    return p;
  }

  static void Write(const std::string& dir,
                    const std::map<std::string, at::Tensor>& ts,
                    at::ScalarType type) {
    std::vector<RawTensor> a, b;
    for (const auto& [name, w] : ts) {
      (name < "c" ? a : b).push_back(ToRaw(name, w.to(type)));
    }
    b.push_back(ToRaw("position_ids", at::arange(8, at::kLong)));
    WriteShardedCheckpoint(dir, {a, b});
  }

  FusionSpec Spec(Method method, int tasks, const std::string& tag) {
    FusionSpec spec;
    spec.method = method;
    spec.pretrained_uri = tmp_.Join("base-" + tag);
    for (int t = 0; t < tasks; ++t) {
      TaskSpec task;
      task.label = absl::StrCat("t", t);
      task.finetuned_uri = tmp_.Join(absl::StrCat("ft", t, "-", tag));
      spec.tasks.push_back(task);
    }
    spec.device = "cpu";
    spec.output_uri = tmp_.Join("unused-out");  // replaced per run
    return spec;
  }

  // Whole (with a patch output) and streamed (the checkpoint alone) with
  // chunks of `chunk` elements: the same fused bytes and report rows.
  void ExpectStreamedMatchesWhole(const FusionSpec& spec, int64_t chunk) {
    const std::string name = absl::StrCat("run", run_++);
    FusionSpec whole = spec;
    whole.output_uri = tmp_.Join(name + "w-out");
    whole.patch_uri = tmp_.Join(name + "w.patch.safetensors");
    FusionSpec streamed = spec;
    streamed.output_uri = tmp_.Join(name + "s-out");
    auto resolver = UriResolver::Create({tmp_.path()});
    ASSERT_TRUE(resolver.ok());
    RunOptions options;
    options.stream_chunk_elements = chunk;
    auto a = RunFusionJob(whole, *resolver, options);
    ASSERT_TRUE(a.ok()) << a.status();
    auto b = RunFusionJob(streamed, *resolver, options);
    ASSERT_TRUE(b.ok()) << b.status();
    ExpectSameFiles(whole.output_uri, streamed.output_uri);
    nlohmann::json ta = (*a)["tensors"], tb = (*b)["tensors"];
    for (auto* t : {&ta, &tb}) {
      for (auto& e : *t) e.erase("seconds");
    }
    EXPECT_EQ(ta, tb);
    EXPECT_GT((*b)["totals"]["kept"].get<int64_t>(), 0);
  }

  TempDir tmp_;
  std::vector<std::map<std::string, at::Tensor>> fts_;
  int run_ = 0;
};

TEST_F(MergekitStreamTest, ElementwiseMethodsMatchWholeTensorBytes) {
  struct Case {
    Method method;
    int tasks;
  };
  for (const Case& c :
       {Case{Method::kLinear, 3}, Case{Method::kSlerp, 1},
        Case{Method::kModelStock, 2}, Case{Method::kModelStock, 3},
        Case{Method::kDareTies, 3}, Case{Method::kTaskArithmetic, 2}}) {
    for (const char* tag : {"bf16", "f32"}) {
      for (bool float64 : {false, true}) {
        for (int64_t chunk : {int64_t{1} << 18, int64_t{37}}) {
          SCOPED_TRACE(absl::StrCat(MethodName(c.method), " ", tag,
                                    " float64=", float64, " chunk=", chunk));
          FusionSpec spec = Spec(c.method, c.tasks, tag);
          spec.tailor.float64 = float64;
          spec.t = 0.3;
          spec.drop = 0.5;
          spec.seed = 7;
          if (c.method != Method::kSlerp && c.method != Method::kModelStock) {
            for (int t = 0; t < c.tasks; ++t) spec.tasks[t].weight = 0.5 + t;
          }
          ASSERT_TRUE(spec.Validate().ok()) << spec.Validate();
          ExpectStreamedMatchesWhole(spec, chunk);
        }
      }
    }
  }
}

TEST_F(MergekitStreamTest, RankedMethodsRunWhole) {
  for (Method m : {Method::kBreadcrumbs, Method::kDella, Method::kTies}) {
    SCOPED_TRACE(MethodName(m));
    FusionSpec spec = Spec(m, 2, "f32");
    spec.density = 0.5;
    spec.sign_cancel = SignCancel::kPositive;
    spec.tasks[0].weight = 2;
    ASSERT_TRUE(spec.Validate().ok()) << spec.Validate();
    ExpectStreamedMatchesWhole(spec, 37);
  }
}

}  // namespace
}  // namespace tailor
