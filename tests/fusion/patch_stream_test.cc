// Issue #11: apply-patch and stitching of task patches stream each tensor in
// chunks (patch_stream.h, stitch_stream.h). The streamed outputs must be the
// bytes of the whole-tensor path (chunk size 0), for chunk sizes that do not
// divide the tensors, every stored float type, one or several tasks and
// every aggregation; bad patch entries get the same errors either way.

#include "fusion/patch_stream.h"

#include <ATen/ATen.h>
#include <gtest/gtest.h>
#include <sys/stat.h>

#include <cmath>
#include <cstring>
#include <functional>
#include <limits>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "fusion/apply_patch.h"
#include "fusion/fusion_job.h"
#include "fusion/patch.h"
#include "io/checkpoint.h"
#include "io/safetensors_file.h"
#include "io/tensor_convert.h"
#include "testing/test_util.h"
#include "util/file_util.h"

namespace tailor {
namespace {

using ::tailor::testing::ExpectSameFiles;
using ::tailor::testing::ReadFileOrDie;
using ::tailor::testing::TempDir;
using ::tailor::testing::ToRaw;
using ::tailor::testing::WriteFileOrDie;
using ::tailor::testing::WriteShardedCheckpoint;

// name -> shape; element counts 91, 29, 185, 9: none a multiple of 8 or of
// the chunk sizes below.
std::vector<std::pair<std::string, std::vector<int64_t>>> Shapes() {
  return {{"a.weight", {7, 13}},
          {"b.weight", {29}},
          {"c.weight", {5, 37}},
          {"d.weight", {3, 3}}};
}

class PatchStreamTest : public ::testing::Test {
 protected:
  void SetUp() override { at::manual_seed(11); }

  std::string Dir(const std::string& name) {
    const std::string p = tmp_.Join(name);
    ::mkdir(p.c_str(), 0755);
    return p;
  }

  // A two-shard base of `type` (plus an integer tensor, copied as is).
  // a.weight[0] is -0.0: a kept zero there turns it into +0.0 (float32
  // -0 + 0), which the streamed paths must reproduce.
  std::string MakeBase(const std::string& name, at::ScalarType type) {
    const std::string dir = Dir(name);
    std::vector<testing::RawTensor> a, b;
    for (const auto& [n, shape] : Shapes()) {
      at::Tensor w = at::randn(shape);
      if (n == "a.weight") w.view({-1})[0] = -0.0;
      pre_[n] = w.to(type);
      (n < "c" ? a : b).push_back(ToRaw(n, w.to(type)));
    }
    a.push_back(ToRaw("ids", at::arange(8, at::kLong)));
    WriteShardedCheckpoint(dir, {a, b});
    return dir;
  }

  // The safetensors dtype whose LibTorch type is `type`.
  static DType DTypeOf(at::ScalarType type) {
    for (DType d : {DType::kF16, DType::kBF16, DType::kF32, DType::kF64}) {
      if (ToScalarType(d) == type) return d;
    }
    ADD_FAILURE() << "no safetensors dtype for " << type;
    return DType::kF32;
  }

  // A patch keeping about `keep` of each tensor (a random mask) with small
  // random deltas; `skip` is left out of it. Task 0 keeps a.weight[0] with
  // a zero delta.
  std::string MakePatch(const std::string& name, at::ScalarType base_type,
                        double keep, int task, const std::string& skip = "") {
    const std::string path = tmp_.Join(name + ".safetensors");
    auto w = PatchWriter::Create(path);
    EXPECT_TRUE(w.ok()) << w.status();
    for (const auto& [n, shape] : Shapes()) {
      if (n == skip) continue;
      at::Tensor mask = at::rand(shape) < keep;
      at::Tensor delta = at::where(mask, 0.1 * at::randn(shape), 0.0);
      if (task == 0 && n == "a.weight") {
        mask.view({-1})[0] = true;
        delta.view({-1})[0] = 0.0;
      }
      EXPECT_TRUE((*w)->Add(n, mask, delta, DTypeOf(base_type),
                            nlohmann::json::object())
                      .ok());
    }
    PatchMetadata md;
    md.method = "tailor";
    EXPECT_TRUE((*w)->Finish(md).ok());
    return path;
  }

  absl::Status Apply(const std::string& base, const std::string& patch,
                     const std::string& out, int64_t chunk) {
    auto resolver = UriResolver::Create({tmp_.path()});
    if (!resolver.ok()) return resolver.status();
    return ApplyPatch(base, patch, out, false, *resolver, chunk);
  }

  absl::StatusOr<nlohmann::json> Fuse(const FusionSpec& spec, int64_t chunk) {
    auto resolver = UriResolver::Create({tmp_.path()});
    if (!resolver.ok()) return resolver.status();
    RunOptions options;
    options.stream_chunk_elements = chunk;
    return RunFusionJob(spec, *resolver, options);
  }

  // Overwrites `bytes` at byte `offset` of stored tensor `tensor`'s data.
  static void Patch(const std::string& path, const std::string& tensor,
                    uint64_t offset, const std::string& bytes) {
    auto file = SafetensorsFile::Open(path);
    ASSERT_TRUE(file.ok()) << file.status();
    const TensorEntry* e = nullptr;
    for (const TensorEntry& t : (*file)->header().tensors) {
      if (t.name == tensor) e = &t;
    }
    ASSERT_NE(e, nullptr) << tensor;
    std::string all = ReadFileOrDie(path);
    const uint64_t at = (*file)->header().data_offset() + e->begin + offset;
    ASSERT_LE(at + bytes.size(), all.size());
    all.replace(at, bytes.size(), bytes);
    WriteFileOrDie(path, all);
  }

  TempDir tmp_;
  std::map<std::string, at::Tensor> pre_;
};

TEST_F(PatchStreamTest, StreamedApplyPatchMatchesWholeTensorBytes) {
  for (at::ScalarType type :
       {at::kBFloat16, at::kFloat, at::kHalf, at::kDouble}) {
    SCOPED_TRACE(c10::toString(type));
    const std::string tag = c10::toString(type);
    const std::string base = MakeBase("base-" + tag, type);
    const std::string patch = MakePatch("p-" + tag, type, 0.3, 0, "d.weight");
    const std::string whole = tmp_.Join("whole-" + tag);
    ASSERT_TRUE(Apply(base, patch, whole, 0).ok());
    // The patch changes the tensors it holds.
    auto out = Checkpoint::Open(whole);
    ASSERT_TRUE(out.ok()) << out.status();
    EXPECT_FALSE(
        (*out)->Read("c.weight")->equal(pre_["c.weight"].to(at::kFloat)));
    EXPECT_EQ((*out)->Read("a.weight")->view({-1})[0].item<float>(), 0.0f);
    EXPECT_FALSE(
        std::signbit((*out)->Read("a.weight")->view({-1})[0].item<float>()));
    for (int64_t chunk :
         {int64_t{1}, int64_t{5}, int64_t{37}, int64_t{1} << 18}) {
      SCOPED_TRACE(chunk);
      const std::string streamed = tmp_.Join(absl::StrCat("s-", tag, chunk));
      absl::Status s = Apply(base, patch, streamed, chunk);
      ASSERT_TRUE(s.ok()) << s;
      ExpectSameFiles(whole, streamed);
    }
  }
}

TEST_F(PatchStreamTest, StreamedStitchingMatchesWholeTensorOutputs) {
  int run = 0;
  for (at::ScalarType type : {at::kBFloat16, at::kFloat}) {
    const std::string tag = c10::toString(type);
    const std::string base = MakeBase("base-" + tag, type);
    // Overlapping masks; the second task's patch lacks d.weight.
    const std::vector<std::string> patches = {
        MakePatch("t0-" + tag, type, 0.4, 0),
        MakePatch("t1-" + tag, type, 0.5, 1, "d.weight"),
        MakePatch("t2-" + tag, type, 0.3, 2)};
    for (int tasks : {1, 3}) {
      for (const char* aggregation : {"mean_selected", "mean_all", "sum"}) {
        for (bool float64 : {false, true}) {
          if (tasks == 1 && aggregation != std::string("sum")) continue;
          SCOPED_TRACE(absl::StrCat(tag, " tasks=", tasks, " ", aggregation,
                                    " float64=", float64));
          FusionSpec spec;
          spec.pretrained_uri = base;
          for (int t = 0; t < tasks; ++t) {
            spec.tasks.push_back(
                TaskSpec{absl::StrCat("t", t), "", patches[t], "", {}, {}});
          }
          spec.method = run % 2 == 0 ? Method::kTailor : Method::kMagnitude;
          spec.aggregation = *ParseAggregation(aggregation);
          spec.tailor.float64 = float64;
          spec.device = "cpu";
          std::vector<nlohmann::json> reports;
          std::vector<std::string> outs, patch_outs;
          for (int64_t chunk : {int64_t{0}, int64_t{7}, int64_t{37}}) {
            const std::string name = absl::StrCat("stitch", run, "-", chunk);
            spec.output_uri = tmp_.Join(name + "-out");
            spec.patch_uri = tmp_.Join(name + ".patch.safetensors");
            auto report = Fuse(spec, chunk);
            ASSERT_TRUE(report.ok()) << report.status();
            nlohmann::json tensors = (*report)["tensors"];
            for (auto& e : tensors) e.erase("seconds");
            reports.push_back(tensors);
            outs.push_back(spec.output_uri);
            patch_outs.push_back(spec.patch_uri);
            EXPECT_GT((*report)["totals"]["kept"].get<int64_t>(), 0);
          }
          for (size_t i = 1; i < outs.size(); ++i) {
            ExpectSameFiles(outs[0], outs[i]);
            EXPECT_EQ(ReadFileOrDie(patch_outs[0]),
                      ReadFileOrDie(patch_outs[i]));
            EXPECT_EQ(reports[0], reports[i]);
          }
          ++run;
        }
      }
    }
  }
}

// Without a fused checkpoint (patch_out only) the stitched patch streams too.
TEST_F(PatchStreamTest, StreamedStitchingOfThePatchAloneMatches) {
  const std::string base = MakeBase("base", at::kBFloat16);
  FusionSpec spec;
  spec.pretrained_uri = base;
  spec.tasks = {
      TaskSpec{"a", "", MakePatch("pa", at::kBFloat16, 0.4, 0), "", {}, {}},
      TaskSpec{"b", "", MakePatch("pb", at::kBFloat16, 0.4, 1), "", {}, {}}};
  spec.device = "cpu";
  spec.patch_uri = tmp_.Join("whole.safetensors");
  ASSERT_TRUE(Fuse(spec, 0).ok());
  spec.patch_uri = tmp_.Join("streamed.safetensors");
  auto r = Fuse(spec, 3);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(ReadFileOrDie(tmp_.Join("whole.safetensors")),
            ReadFileOrDie(tmp_.Join("streamed.safetensors")));
}

// A bad entry -- popcount != kept, a set pad bit, a NaN value -- is refused
// with the whole-tensor path's message, and nothing is published.
TEST_F(PatchStreamTest, BadPatchEntriesGetTheWholeTensorErrors) {
  const std::string base = MakeBase("base", at::kBFloat16);
  struct Case {
    const char* what;
    std::function<void(const std::string&)> corrupt;
    const char* message;
  };
  float nan = std::numeric_limits<float>::quiet_NaN();
  std::string nan_bytes(reinterpret_cast<const char*>(&nan), sizeof nan);
  const std::vector<Case> cases = {
      // Byte 3 of c.weight's mask: flipping all its bits changes the
      // popcount (masks keep about half).
      {"popcount",
       [](const std::string& p) {
         auto bytes = ReadFileOrDie(p);
         auto file = SafetensorsFile::Open(p);
         for (const TensorEntry& t : (*file)->header().tensors) {
           if (t.name != "c.weight.mask") continue;
           const uint64_t at = (*file)->header().data_offset() + t.begin + 3;
           bytes[at] = static_cast<char>(~bytes[at]);
           // Keep the popcount different for certain.
           if (__builtin_popcount(static_cast<uint8_t>(bytes[at])) == 4) {
             bytes[at] = static_cast<char>(bytes[at] ^ 1);
           }
         }
         WriteFileOrDie(p, bytes);
       },
       "set bits but"},
      // b.weight: 29 entries, bits 5..7 of its last byte are pad.
      {"pad bits",
       [](const std::string& p) { Patch(p, "b.weight.mask", 3, "\xe0"); },
       "pad bits of the last mask byte"},
      {"nan",
       [&](const std::string& p) { Patch(p, "c.weight.values", 8, nan_bytes); },
       "NaN or Inf"},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.what);
    const std::string patch =
        MakePatch(absl::StrCat("bad-", c.what), at::kBFloat16, 0.5, 1);
    c.corrupt(patch);
    std::string messages[2];
    int i = 0;
    for (int64_t chunk : {int64_t{0}, int64_t{5}}) {
      const std::string out = tmp_.Join(absl::StrCat("out-", c.what, chunk));
      absl::Status s = Apply(base, patch, out, chunk);
      ASSERT_FALSE(s.ok());
      EXPECT_NE(s.message().find(c.message), std::string::npos) << s;
      EXPECT_FALSE(PathExists(out));
      messages[i++] = std::string(s.message());
    }
    EXPECT_EQ(messages[0], messages[1]);
    // Stitching it (with a good patch) fails the same way, whole or
    // streamed.
    FusionSpec spec;
    spec.pretrained_uri = base;
    spec.tasks = {TaskSpec{"good",
                           "",
                           MakePatch(absl::StrCat("good-", c.what),
                                     at::kBFloat16, 0.3, 0),
                           "",
                           {},
                           {}},
                  TaskSpec{"bad", "", patch, "", {}, {}}};
    spec.device = "cpu";
    std::string fuse_messages[2];
    i = 0;
    for (int64_t chunk : {int64_t{0}, int64_t{5}}) {
      spec.output_uri = tmp_.Join(absl::StrCat("fused-", c.what, chunk));
      auto r = Fuse(spec, chunk);
      ASSERT_FALSE(r.ok());
      EXPECT_NE(r.status().message().find(c.message), std::string::npos)
          << r.status();
      EXPECT_FALSE(PathExists(spec.output_uri));
      fuse_messages[i++] = std::string(r.status().message());
    }
    EXPECT_EQ(fuse_messages[0], fuse_messages[1]);
  }
}

// A streamed stitching job records journal entries a later run resumes from
// (the stored bytes and the stitched patch entry), with the whole-tensor
// path's outputs either way.
TEST_F(PatchStreamTest, StreamedStitchingJournalsAndResumes) {
  const std::string base = MakeBase("base", at::kBFloat16);
  FusionSpec spec;
  spec.pretrained_uri = base;
  spec.tasks = {
      TaskSpec{"a", "", MakePatch("pa", at::kBFloat16, 0.4, 0), "", {}, {}},
      TaskSpec{"b",
               "",
               MakePatch("pb", at::kBFloat16, 0.4, 1, "d.weight"),
               "",
               {},
               {}}};
  spec.device = "cpu";
  spec.overwrite = true;
  spec.output_uri = tmp_.Join("whole-out");
  spec.patch_uri = tmp_.Join("whole.safetensors");
  ASSERT_TRUE(Fuse(spec, 0).ok());
  auto resolver = UriResolver::Create({tmp_.path()});
  ASSERT_TRUE(resolver.ok());
  RunOptions options;
  options.stream_chunk_elements = 7;
  options.journal_dir = tmp_.Join("journal");
  spec.output_uri = tmp_.Join("journalled-out");
  spec.patch_uri = tmp_.Join("journalled.safetensors");
  for (int run = 0; run < 2; ++run) {
    SCOPED_TRACE(run);
    auto report = RunFusionJob(spec, *resolver, options);
    ASSERT_TRUE(report.ok()) << report.status();
    // The second run computes nothing: every fused tensor comes back from
    // the journal.
    EXPECT_EQ((*report)["totals"]["resumed_tensors"].get<int64_t>(),
              run == 0 ? 0 : 3);
    ExpectSameFiles(tmp_.Join("whole-out"), spec.output_uri);
    EXPECT_EQ(ReadFileOrDie(tmp_.Join("whole.safetensors")),
              ReadFileOrDie(spec.patch_uri));
    if (run == 0) {
      // The stored bytes went to sidecars, chunk by chunk; damage one: that
      // tensor is computed again, the others resume.
      int sidecars = 0;
      auto names = ListDirectory(options.journal_dir);
      ASSERT_TRUE(names.ok());
      for (const std::string& n : *names) {
        sidecars += absl::EndsWith(n, ".fused");
      }
      EXPECT_EQ(sidecars, 4);
      const std::string side = JoinPath(options.journal_dir, "00000001.fused");
      std::string bytes = ReadFileOrDie(side);
      bytes[3] ^= 0x01;
      WriteFileOrDie(side, bytes);
    }
  }
}

}  // namespace
}  // namespace tailor
