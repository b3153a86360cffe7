// Magnitude and TIES stream each tensor (FusionJob's StreamOne, through
// streamed_merge.h) when the fused checkpoint is the only output; with a
// patch output they are computed whole (FuseOne). Both must give the same
// bytes and the same per-tensor report, for any chunk size, task count,
// compute precision and stored dtype.

#include <ATen/ATen.h>
#include <gtest/gtest.h>
#include <sys/stat.h>

#include <map>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "fusion/fusion_job.h"
#include "fusion/top_k_window.h"
#include "io/checkpoint.h"
#include "testing/test_util.h"
#include "util/file_util.h"

namespace tailor {
namespace {

using ::tailor::testing::ExpectSameFiles;
using ::tailor::testing::RawTensor;
using ::tailor::testing::ReadFileOrDie;
using ::tailor::testing::TempDir;
using ::tailor::testing::ToRaw;
using ::tailor::testing::WriteShardedCheckpoint;

class StreamedMergeTest : public ::testing::Test {
 protected:
  void SetUp() override {
    at::manual_seed(11);
    // Shapes that no chunk size below divides; deltas with many exact ties
    // (small multiples of 1/8, zeros), a constant delta (min-max range 0),
    // an all-zero delta, a 1-D tensor.
    std::map<std::string, at::Tensor> pre = {{"a.weight", at::randn({30, 41})},
                                             {"b.weight", at::randn({7, 13})},
                                             {"c.weight", at::randn({5, 9})},
                                             {"d.weight", at::randn({6, 6})},
                                             {"norm.weight", at::randn({41})}};
    for (int t = 0; t < 3; ++t) {
      std::map<std::string, at::Tensor> ft;
      for (const auto& [name, w] : pre) {
        ft[name] = w + 0.3 * at::randn(w.sizes());
      }
      ft["b.weight"] =
          pre["b.weight"] + at::randint(-3, 4, {7, 13}).to(at::kFloat) / 8.0;
      ft["c.weight"] = pre["c.weight"] + 0.5 * (t + 1);
      ft["d.weight"] = pre["d.weight"];
      fts_.push_back(ft);
    }
    pre_ = pre;
    for (at::ScalarType type : {at::kBFloat16, at::kFloat}) {
      const std::string tag = type == at::kFloat ? "f32" : "bf16";
      Write(Dir("base-" + tag), pre_, type);
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

  // Two shards plus an integer buffer.
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

  FusionSpec Spec(const std::string& name, int tasks, const std::string& tag) {
    FusionSpec spec;
    spec.pretrained_uri = tmp_.Join("base-" + tag);
    for (int t = 0; t < tasks; ++t) {
      spec.tasks.push_back(TaskSpec{absl::StrCat("t", t),
                                    tmp_.Join(absl::StrCat("ft", t, "-", tag)),
                                    "",
                                    "",
                                    {},
                                    {}});
    }
    spec.output_uri = tmp_.Join(name + "-out");
    spec.device = "cpu";
    return spec;
  }

  // Runs `spec` whole (with a patch output) and streamed (the checkpoint
  // alone) with chunks of `chunk` elements; expects the same fused bytes
  // and report rows (timings aside). Returns the streamed report.
  nlohmann::json ExpectStreamedMatchesWhole(const FusionSpec& spec,
                                            int64_t chunk) {
    const std::string name = absl::StrCat("run", run_++);
    FusionSpec whole = spec;
    whole.output_uri = tmp_.Join(name + "w-out");
    whole.patch_uri = tmp_.Join(name + "w.patch.safetensors");
    FusionSpec streamed = spec;
    streamed.output_uri = tmp_.Join(name + "s-out");
    streamed.patch_uri.clear();
    auto resolver = UriResolver::Create({tmp_.path()});
    EXPECT_TRUE(resolver.ok());
    RunOptions options;
    options.stream_chunk_elements = chunk;
    auto a = RunFusionJob(whole, *resolver, options);
    EXPECT_TRUE(a.ok()) << a.status();
    auto b = RunFusionJob(streamed, *resolver, options);
    EXPECT_TRUE(b.ok()) << b.status();
    if (!a.ok() || !b.ok()) return {};
    ExpectSameFiles(whole.output_uri, streamed.output_uri);
    nlohmann::json ta = (*a)["tensors"], tb = (*b)["tensors"];
    for (auto* t : {&ta, &tb}) {
      for (auto& e : *t) {
        e.erase("seconds");
        if (e.contains("tasks")) {
          for (auto& task : e["tasks"]) task.erase("seconds");
        }
      }
    }
    EXPECT_EQ(ta, tb);
    EXPECT_EQ((*a)["totals"]["kept"], (*b)["totals"]["kept"]);
    return *b;
  }

  TempDir tmp_;
  std::map<std::string, at::Tensor> pre_;
  std::vector<std::map<std::string, at::Tensor>> fts_;
  int run_ = 0;
};

TEST_F(StreamedMergeTest, MagnitudeMatchesWholeTensorBytesAndReport) {
  for (const char* tag : {"bf16", "f32"}) {
    for (int tasks : {1, 2, 3}) {
      for (bool float64 : {false, true}) {
        for (int64_t chunk : {int64_t{1} << 18, int64_t{37}, int64_t{1}}) {
          for (Aggregation agg : {Aggregation::kMeanSelected,
                                  Aggregation::kMeanAll, Aggregation::kSum}) {
            if (tasks == 1 && agg != Aggregation::kMeanSelected) continue;
            if (chunk == 1 && (tasks == 2 || float64)) continue;
            SCOPED_TRACE(absl::StrCat(tag, " tasks=", tasks,
                                      " float64=", float64, " chunk=", chunk,
                                      " aggregate=", AggregationName(agg)));
            FusionSpec spec = Spec("mag", tasks, tag);
            spec.method = Method::kMagnitude;
            spec.tailor.keep_ratio = 0.3;
            spec.tailor.float64 = float64;
            spec.aggregation = agg;
            if (tasks > 1) spec.tasks[1].keep_ratio = 0.55;
            nlohmann::json report = ExpectStreamedMatchesWhole(spec, chunk);
            EXPECT_GT(report["totals"]["kept"].get<int64_t>(), 0);
          }
        }
      }
    }
  }
}

// Row scope streams a tensor scored as one row (1-D) and computes a
// several-row one whole; z-score normalisation is computed whole: the
// bytes are those of the whole-tensor path either way.
TEST_F(StreamedMergeTest, MagnitudeSelectionVariantsMatchWholeTensorBytes) {
  for (Scope scope : {Scope::kRow, Scope::kBlock}) {
    for (Normalization norm :
         {Normalization::kMinMax, Normalization::kZScore}) {
      SCOPED_TRACE(
          absl::StrCat(ScopeName(scope), " ", NormalizationName(norm)));
      FusionSpec spec = Spec("magv", 2, "bf16");
      spec.method = Method::kMagnitude;
      spec.tailor.keep_ratio = 0.25;
      spec.tailor.scope = scope;
      spec.tailor.block_size = 8;
      spec.tailor.normalization = norm;
      ExpectStreamedMatchesWhole(spec, 37);
    }
  }
}

TEST_F(StreamedMergeTest, TiesMatchesWholeTensorBytesAndReport) {
  for (const char* tag : {"bf16", "f32"}) {
    for (int tasks : {1, 2, 3}) {
      for (bool float64 : {false, true}) {
        for (int64_t chunk : {int64_t{1} << 18, int64_t{37}, int64_t{1}}) {
          for (double density : {0.3, 1.0}) {
            if (chunk == 1 && (tasks == 2 || float64 || density == 1.0)) {
              continue;
            }
            SCOPED_TRACE(absl::StrCat(tag, " tasks=", tasks,
                                      " float64=", float64, " chunk=", chunk,
                                      " density=", density));
            FusionSpec spec = Spec("ties", tasks, tag);
            spec.method = Method::kTies;
            spec.density = density;
            spec.lambda = 0.7;
            spec.tailor.float64 = float64;
            nlohmann::json report = ExpectStreamedMatchesWhole(spec, chunk);
            EXPECT_GT(report["totals"]["kept"].get<int64_t>(), 0);
          }
        }
      }
    }
  }
}

// Tensors larger than TopKWindow's sample, so that it is spread over them:
// an ordinary delta (the window settles the selection in pass 0), one that
// is zero almost everywhere (a predicted overflow disables the window),
// and one whose sampled blocks hold small deltas and every other element a
// large one (the window misjudges the k-th value and the radix passes
// decide). The bytes are the whole-tensor path's in every case.
TEST_F(StreamedMergeTest, LargeTensorsMatchWholeTensorBytesWhateverTheSample) {
  const int64_t rows = 300, cols = 400, n = rows * cols, chunk = 1000;
  at::Tensor sampled = at::zeros({n}, at::kBool);
  for (const auto& [off, m] : TopKWindow<float>::SampleBlocks(n, chunk)) {
    sampled.slice(0, off, off + m).fill_(true);
  }
  ASSERT_GT(sampled.sum().item<int64_t>(), n / 4);
  ASSERT_LT(sampled.sum().item<int64_t>(), n - n / 4);
  std::map<std::string, at::Tensor> pre = {
      {"plain.weight", at::randn({rows, cols})},
      {"sparse.weight", at::randn({rows, cols})},
      {"tricky.weight", at::zeros({rows, cols})}};
  for (at::ScalarType type : {at::kBFloat16, at::kFloat}) {
    const std::string tag = type == at::kFloat ? "f32" : "bf16";
    Write(Dir("big-base-" + tag), pre, type);
    for (int t = 0; t < 2; ++t) {
      std::map<std::string, at::Tensor> ft;
      ft["plain.weight"] = pre["plain.weight"] + 0.1 * at::randn({rows, cols});
      ft["sparse.weight"] =
          pre["sparse.weight"] + at::where(at::rand({rows, cols}) < 0.03,
                                           at::randn({rows, cols}),
                                           at::zeros({rows, cols}));
      ft["tricky.weight"] =
          at::where(sampled, 1e-3 * at::randn({n}), 1 + at::rand({n}))
              .view({rows, cols});
      Write(Dir(absl::StrCat("big-ft", t, "-", tag)), ft, type);
    }
  }
  for (const char* tag : {"bf16", "f32"}) {
    for (int tasks : {1, 2}) {
      for (Method method : {Method::kMagnitude, Method::kTies}) {
        for (bool float64 : {false, true}) {
          if (float64 && tasks == 2) continue;
          SCOPED_TRACE(absl::StrCat(tag, " tasks=", tasks, " ",
                                    MethodName(method), " float64=", float64));
          FusionSpec spec = Spec("big", tasks, tag);
          spec.pretrained_uri = tmp_.Join(absl::StrCat("big-base-", tag));
          for (int t = 0; t < tasks; ++t) {
            spec.tasks[t].finetuned_uri =
                tmp_.Join(absl::StrCat("big-ft", t, "-", tag));
          }
          spec.method = method;
          spec.tailor.keep_ratio = 0.1;
          spec.tailor.float64 = float64;
          spec.density = 0.1;
          nlohmann::json report = ExpectStreamedMatchesWhole(spec, chunk);
          EXPECT_GT(report["totals"]["kept"].get<int64_t>(), 0);
        }
      }
    }
  }
}

// SPIDER's statistics are float64 sums in index order on both paths
// (spider_kernel.h), so streaming keeps the bytes for any chunk size.
TEST_F(StreamedMergeTest, SpiderMatchesWholeTensorBytesAndReport) {
  for (const char* tag : {"bf16", "f32"}) {
    for (bool float64 : {false, true}) {
      for (int64_t chunk : {int64_t{1} << 18, int64_t{37}, int64_t{1}}) {
        if (chunk == 1 && float64) continue;
        SCOPED_TRACE(absl::StrCat(tag, " float64=", float64, " chunk=", chunk));
        FusionSpec spec = Spec("spider", 1, tag);
        spec.method = Method::kSpider;
        spec.tailor.float64 = float64;
        nlohmann::json report = ExpectStreamedMatchesWhole(spec, chunk);
        EXPECT_GT(report["totals"]["kept"].get<int64_t>(), 0);
      }
    }
  }
}

// Non-finite values are handled in the streamed path as the whole-tensor
// path handles them, without computing the tensor whole: a NaN or Inf input
// is refused with its error (naming the first input holding one, in
// FuseOne's order: pre-trained, then each task), nothing of the tensor
// written; an overflow of ft - pre to +-Inf gives its bytes and report rows
// (magnitude's "compensation produced non-finite values" fallback, NaN
// min-max scores Inf / Inf, Inf outputs).
TEST_F(StreamedMergeTest, NonFiniteInputsAreHandledAsTheWholeTensorPath) {
  std::map<std::string, at::Tensor> pre = {{"w", at::randn({16, 16})}};
  std::map<std::string, at::Tensor> ft0 = {
      {"w", pre["w"] + 0.1 * at::randn({16, 16})}};
  std::map<std::string, at::Tensor> ft1 = {
      {"w", pre["w"] + 0.1 * at::randn({16, 16})}};
  pre["w"].view({-1})[100] = -3e38;  // ft0 - pre overflows to +Inf
  ft0["w"].view({-1})[100] = 3e38;
  pre["w"].view({-1})[150] = 3e38;  // both tasks overflow to -Inf
  ft0["w"].view({-1})[150] = -3e38;
  ft1["w"].view({-1})[150] = -3e38;
  pre["w"].view({-1})[170] = 3e38;  // ft0 - pre finite, ft1 - pre -Inf
  ft1["w"].view({-1})[170] = -3e38;
  for (at::ScalarType type : {at::kBFloat16, at::kFloat}) {
    const std::string tag = type == at::kFloat ? "f32" : "bf16";
    Write(Dir("ov-base-" + tag), pre, type);
    Write(Dir("ov-ft0-" + tag), ft0, type);
    Write(Dir("ov-ft1-" + tag), ft1, type);
  }
  // NaN / Inf inputs: late in ft0, early in ft1, and (a third checkpoint)
  // late in pre: the first in FuseOne's order is named.
  std::map<std::string, at::Tensor> nan_ft0 = ft0, nan_ft1 = ft1, nan_pre = pre;
  nan_ft0["w"] = ft0["w"].clone();
  nan_ft0["w"].view({-1})[250] = std::numeric_limits<float>::quiet_NaN();
  nan_ft1["w"] = ft1["w"].clone();
  nan_ft1["w"].view({-1})[3] = std::numeric_limits<float>::infinity();
  nan_pre["w"] = pre["w"].clone();
  nan_pre["w"].view({-1})[255] = -std::numeric_limits<float>::infinity();
  Write(Dir("nan-ft0"), nan_ft0, at::kBFloat16);
  Write(Dir("nan-ft1"), nan_ft1, at::kBFloat16);
  Write(Dir("nan-pre"), nan_pre, at::kBFloat16);
  for (Method method : {Method::kMagnitude, Method::kTies, Method::kSpider}) {
    SCOPED_TRACE(MethodName(method));
    for (const std::string tag : {"bf16", "f32"}) {
      for (int tasks : {1, 2}) {
        for (bool float64 : {false, true}) {
          if (method == Method::kSpider && tasks > 1) continue;
          SCOPED_TRACE(absl::StrCat(tag, " tasks ", tasks, " f64 ", float64));
          FusionSpec spec;
          spec.pretrained_uri = tmp_.Join("ov-base-" + tag);
          for (int t = 0; t < tasks; ++t) {
            spec.tasks.push_back(
                TaskSpec{absl::StrCat("t", t),
                         tmp_.Join(absl::StrCat("ov-ft", t, "-", tag)),
                         "",
                         "",
                         {},
                         {}});
          }
          spec.method = method;
          spec.tailor.float64 = float64;
          spec.tailor.keep_ratio = 0.3;
          spec.density = 0.3;
          spec.device = "cpu";
          for (int64_t chunk : {37, 1 << 20}) {
            const nlohmann::json report =
                ExpectStreamedMatchesWhole(spec, chunk);
            if (method == Method::kMagnitude && !float64) {
              // The overflow is there: the fallback is reported.
              bool reported = false;
              for (const auto& e : report["tensors"]) {
                if (e.value("name", "") == "w" && e.contains("tasks")) {
                  reported = e["tasks"][0].contains("fallback_reason");
                }
              }
              EXPECT_TRUE(reported) << report.dump();
            }
          }
        }
      }
    }
    struct Case {
      std::string pre, ft0, ft1, message;
    };
    const std::vector<Case> cases = {
        {"ov-base-bf16", "nan-ft0", "", "w: fine-tuned tensor"},
        {"ov-base-bf16", "nan-ft0", "nan-ft1", "w: fine-tuned tensor"},
        {"ov-base-bf16", "ov-ft0-bf16", "nan-ft1", "w: fine-tuned tensor"},
        {"nan-pre", "nan-ft0", "nan-ft1", "w: pre-trained tensor"},
    };
    for (const Case& c : cases) {
      for (int64_t chunk : {int64_t{0}, int64_t{37}}) {
        SCOPED_TRACE(
            absl::StrCat(c.pre, " ", c.ft0, " ", c.ft1, " chunk ", chunk));
        if (method == Method::kSpider && !c.ft1.empty()) continue;
        FusionSpec spec;
        spec.pretrained_uri = tmp_.Join(c.pre);
        spec.tasks.push_back(TaskSpec{"t0", tmp_.Join(c.ft0), "", "", {}, {}});
        if (!c.ft1.empty()) {
          spec.tasks.push_back(
              TaskSpec{"t1", tmp_.Join(c.ft1), "", "", {}, {}});
        }
        spec.method = method;
        spec.device = "cpu";
        spec.output_uri = tmp_.Join(absl::StrCat("nan-out-", run_++));
        auto resolver = UriResolver::Create({tmp_.path()});
        ASSERT_TRUE(resolver.ok());
        RunOptions options;
        options.stream_chunk_elements = chunk;  // 0: computed whole
        auto report = RunFusionJob(spec, *resolver, options);
        EXPECT_EQ(report.status().code(), absl::StatusCode::kInvalidArgument);
        EXPECT_EQ(report.status().message(),
                  c.message + " contains NaN or Inf");
        EXPECT_FALSE(PathExists(spec.output_uri));
      }
    }
  }
}

}  // namespace
}  // namespace tailor
