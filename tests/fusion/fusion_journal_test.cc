// The per-tensor journal (RunOptions::journal_dir): a job cancelled midway
// and run again with its journal continues from its last completed tensor,
// and its outputs are byte-identical to an uninterrupted run's. Also the
// per-tensor device scheduler (RunOptions::device_scheduler) over the same
// fixture: outputs do not depend on which device each tensor ran on.

#include <ATen/ATen.h>
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdio>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "fusion/fusion_job.h"
#include "fusion/journal.h"
#include "jobs/device_pool.h"
#include "testing/test_util.h"
#include "two_task_fixture.h"
#include "util/file_util.h"

namespace tailor {
namespace {

using ::tailor::testing::RawTensor;
using ::tailor::testing::ReadFileOrDie;
using ::tailor::testing::SerializeSafetensors;
using ::tailor::testing::TempDir;
using ::tailor::testing::ToRaw;
using ::tailor::testing::WithoutRunFacts;
using ::tailor::testing::WriteFileOrDie;
using ::tailor::testing::WriteShardedCheckpoint;

constexpr int64_t kHidden = 16, kInter = 24;

// Records events; sets `cancel` once `cancel_after` tensors were computed.
class Recorder : public ProgressSink {
 public:
  explicit Recorder(int cancel_after = -1) : cancel_after_(cancel_after) {}
  void OnEvent(const ProgressEvent& e) override {
    if (e.kind == ProgressEvent::Kind::kTensorDone) {
      ++actions[e.action];
      ++devices[e.action + "@" + e.device];
      if (e.action == "fused" && actions["fused"] == cancel_after_) {
        cancel = true;
      }
    } else if (e.kind == ProgressEvent::Kind::kWarning) {
      warnings.push_back(e.message);
    }
  }
  bool Warned(absl::string_view text) const {
    for (const std::string& w : warnings) {
      if (absl::StrContains(w, text)) return true;
    }
    return false;
  }
  std::atomic<bool> cancel{false};
  std::map<std::string, int> actions;
  std::map<std::string, int> devices;  // "action@device"
  std::vector<std::string> warnings;

 private:
  const int cancel_after_;
};

class FusionJournalTest : public ::tailor::testing::TwoTaskTest {
 protected:
  void SetUp() override {
    at::manual_seed(7);
    std::map<std::string, at::Tensor> pre;
    for (int l = 0; l < 3; ++l) {
      const std::string p = absl::StrCat("model.layers.", l, ".");
      pre[p + "self_attn.q_proj.weight"] = at::randn({kHidden, kHidden});
      pre[p + "mlp.up_proj.weight"] = at::randn({kInter, kHidden});
      pre[p + "mlp.down_proj.weight"] = at::randn({kHidden, kInter});
    }
    pre["model.norm.weight"] = at::ones({kHidden});
    WriteModels(pre, [this](const std::string& p) { return WriteHessians(p); });
    pre_ = pre;
    out_ = tmp_.Join("out");
    patch_ = tmp_.Join("p.safetensors");
    report_ = tmp_.Join("report.json");
    journal_ = tmp_.Join("journal");
  }

  std::string WriteHessians(const std::string& path) {
    at::Tensor x = at::randn({100, kHidden});
    std::vector<RawTensor> t = {
        ToRaw("model.layers.0.self_attn.q_proj.hessian",
              (2.0 / 100 * x.t().matmul(x)).contiguous())};
    WriteFileOrDie(path, SerializeSafetensors(
                             t, {{"format", "tailor-hessian/1"},
                                 {"nsamples", "100"},
                                 {"aliases",
                                  "{\"model.layers.1.self_attn.q_proj.weight\""
                                  ": \"model.layers.0.self_attn.q_proj."
                                  "hessian\"}"}}));
    return path;
  }

  // Two tasks (so per-task patches are written), all outputs.
  FusionSpec Spec(double keep = 0.2) {
    FusionSpec spec;
    spec.pretrained_uri = base_;
    for (int t = 0; t < 2; ++t) {
      TaskSpec task;
      task.label = absl::StrCat("t", t);
      task.finetuned_uri = ft_[t];
      task.hessian_uri = hessians_[t];
      spec.tasks.push_back(task);
    }
    spec.tailor.keep_ratio = keep;
    spec.output_uri = out_;
    spec.patch_uri = patch_;
    spec.report_uri = report_;
    spec.device = "cpu";
    return spec;
  }

  absl::StatusOr<nlohmann::json> Run(
      const FusionSpec& spec, Recorder* sink, bool journal,
      TensorDeviceScheduler* scheduler = nullptr) {
    auto resolver = UriResolver::Create({tmp_.path()});
    if (!resolver.ok()) return resolver.status();
    RunOptions options;
    options.progress = sink;
    options.cancel = sink == nullptr ? nullptr : &sink->cancel;
    if (journal) options.journal_dir = journal_;
    options.device_scheduler = scheduler;
    return RunFusionJob(spec, *resolver, options);
  }

  std::vector<std::string> OutputFiles() const {
    return {patch_, tmp_.Join("p.t0.safetensors"),
            tmp_.Join("p.t1.safetensors")};
  }

  // Runs `spec` without a journal and moves its outputs to "ref-*".
  nlohmann::json Reference(const FusionSpec& spec) {
    auto report = Run(spec, nullptr, false);
    EXPECT_TRUE(report.ok()) << report.status();
    EXPECT_EQ(std::rename(out_.c_str(), tmp_.Join("ref-out").c_str()), 0);
    for (const std::string& f : OutputFiles()) {
      EXPECT_EQ(std::rename(f.c_str(), (f + ".ref").c_str()), 0) << f;
    }
    EXPECT_TRUE(RemoveAll(report_).ok());
    return report.ok() ? *report : nlohmann::json();
  }

  void ExpectSameAsReference(const nlohmann::json& ref,
                             const nlohmann::json& report) {
    const std::string ref_out = tmp_.Join("ref-out");
    auto na = ListDirectory(ref_out);
    auto nb = ListDirectory(out_);
    ASSERT_TRUE(na.ok() && nb.ok());
    ASSERT_EQ(*na, *nb);
    for (const std::string& n : *na) {
      EXPECT_EQ(ReadFileOrDie(JoinPath(ref_out, n)),
                ReadFileOrDie(JoinPath(out_, n)))
          << n;
    }
    for (const std::string& f : OutputFiles()) {
      EXPECT_EQ(ReadFileOrDie(f + ".ref"), ReadFileOrDie(f)) << f;
    }
    EXPECT_EQ(WithoutRunFacts(ref), WithoutRunFacts(report));
    EXPECT_EQ(WithoutRunFacts(ref),
              WithoutRunFacts(nlohmann::json::parse(ReadFileOrDie(report_))));
  }

  int JournalEntries() const {
    auto names = ListDirectory(journal_);
    if (!names.ok()) return -1;
    int n = 0;
    for (const auto& name : *names) {
      n += absl::EndsWith(name, ".safetensors") ? 1 : 0;
    }
    return n;
  }

  std::string out_, patch_, report_, journal_;
  std::map<std::string, at::Tensor> pre_;
};

TEST_F(FusionJournalTest, CancelledJobContinuesFromItsJournal) {
  const FusionSpec spec = Spec();
  const nlohmann::json ref = Reference(spec);
  const int fused = ref["totals"]["tensors_fused"].get<int>();
  const int copied = ref["totals"]["tensors_copied"].get<int>();
  ASSERT_EQ(fused, 10);
  ASSERT_GT(ref["totals"]["error_mask_only"].get<double>(), 0);
  EXPECT_EQ(ref["totals"]["resumed_tensors"], 0);

  constexpr int kDone = 4;
  Recorder first(kDone);
  auto cancelled = Run(spec, &first, true);
  ASSERT_EQ(cancelled.status().code(), absl::StatusCode::kCancelled)
      << cancelled.status();
  EXPECT_FALSE(PathExists(out_));
  EXPECT_FALSE(PathExists(patch_));
  EXPECT_EQ(JournalEntries(), kDone);
  const uint64_t journal_bytes = *JournalBytes(journal_);

  Recorder second;
  auto report = Run(spec, &second, true);
  ASSERT_TRUE(report.ok()) << report.status();
  EXPECT_EQ((*report)["totals"]["resumed_tensors"], kDone);
  EXPECT_EQ(second.actions["resumed"], kDone);
  EXPECT_EQ(second.actions["fused"], fused - kDone);
  EXPECT_EQ(second.actions["copied"], copied);
  EXPECT_TRUE(second.Warned("resuming from journal"));
  ExpectSameAsReference(ref, *report);
  // The engine leaves the journal to its caller.
  EXPECT_EQ(JournalEntries(), fused);
  std::printf(
      "journal: %d of %d fused tensors resumed; %llu journal bytes "
      "after %d tensors, %llu after all\n",
      kDone, fused, static_cast<unsigned long long>(journal_bytes), kDone,
      static_cast<unsigned long long>(*JournalBytes(journal_)));

  // A third run resumes everything and still matches.
  ASSERT_TRUE(RemoveAll(out_).ok());
  ASSERT_TRUE(RemoveAll(report_).ok());
  for (const std::string& f : OutputFiles()) ASSERT_TRUE(RemoveAll(f).ok());
  Recorder third;
  report = Run(spec, &third, true);
  ASSERT_TRUE(report.ok()) << report.status();
  EXPECT_EQ((*report)["totals"]["resumed_tensors"], fused);
  EXPECT_EQ(third.actions["fused"], 0);
  ExpectSameAsReference(ref, *report);
}

// A streamed merge (DARE, checkpoint output only: FusionJob's StreamOne)
// journals the bytes it streamed; a resumed job replays them and its output
// equals an uninterrupted run's byte for byte.
TEST_F(FusionJournalTest, StreamedMergeResumesByteIdentically) {
  FusionSpec spec = Spec();
  spec.method = Method::kDare;
  spec.drop = 0.5;
  spec.seed = 3;
  spec.patch_uri.clear();
  for (TaskSpec& t : spec.tasks) t.hessian_uri.clear();
  auto ref = Run(spec, nullptr, false);
  ASSERT_TRUE(ref.ok()) << ref.status();
  const std::string ref_out = tmp_.Join("ref-out");
  ASSERT_EQ(std::rename(out_.c_str(), ref_out.c_str()), 0);
  ASSERT_TRUE(RemoveAll(report_).ok());
  const int fused = (*ref)["totals"]["tensors_fused"].get<int>();
  ASSERT_GT(fused, 3);

  constexpr int kDone = 3;
  Recorder first(kDone);
  auto cancelled = Run(spec, &first, true);
  ASSERT_EQ(cancelled.status().code(), absl::StatusCode::kCancelled)
      << cancelled.status();
  EXPECT_EQ(JournalEntries(), kDone);
  Recorder second;
  auto report = Run(spec, &second, true);
  ASSERT_TRUE(report.ok()) << report.status();
  EXPECT_EQ((*report)["totals"]["resumed_tensors"], kDone);
  EXPECT_EQ(second.actions["fused"], fused - kDone);
  auto names = ListDirectory(ref_out);
  ASSERT_TRUE(names.ok());
  for (const std::string& n : *names) {
    EXPECT_EQ(ReadFileOrDie(JoinPath(ref_out, n)),
              ReadFileOrDie(JoinPath(out_, n)))
        << n;
  }
  EXPECT_EQ(WithoutRunFacts(*ref), WithoutRunFacts(*report));
}

TEST_F(FusionJournalTest, JournalOfAnotherSpecIsDiscarded) {
  Recorder first(3);
  ASSERT_EQ(Run(Spec(0.2), &first, true).status().code(),
            absl::StatusCode::kCancelled);
  ASSERT_EQ(JournalEntries(), 3);

  const FusionSpec other = Spec(0.35);
  const nlohmann::json ref = Reference(other);
  Recorder second;
  auto report = Run(other, &second, true);
  ASSERT_TRUE(report.ok()) << report.status();
  EXPECT_EQ((*report)["totals"]["resumed_tensors"], 0);
  EXPECT_EQ(second.actions["resumed"], 0);
  EXPECT_TRUE(second.Warned("discarded"));
  ExpectSameAsReference(ref, *report);
}

TEST_F(FusionJournalTest, JournalOfOtherInputsIsDiscarded) {
  const FusionSpec spec = Spec();
  Recorder first(3);
  ASSERT_EQ(Run(spec, &first, true).status().code(),
            absl::StatusCode::kCancelled);
  // Same spec and the same layout (so the same header fingerprints), but
  // task 0's checkpoint was rewritten with other values.
  std::map<std::string, at::Tensor> ft;
  for (auto& [name, w] : pre_) ft[name] = w + 0.3 * at::randn(w.sizes());
  ASSERT_TRUE(RemoveAll(ft_[0]).ok());
  WriteCheckpoint(Dir("ft0"), ft);
  Recorder second;
  auto report = Run(spec, &second, true);
  ASSERT_TRUE(report.ok()) << report.status();
  EXPECT_EQ((*report)["totals"]["resumed_tensors"], 0);
  EXPECT_TRUE(second.Warned("discarded"));
}

TEST_F(FusionJournalTest, DamagedEntriesAreRecomputed) {
  const FusionSpec spec = Spec();
  const nlohmann::json ref = Reference(spec);
  Recorder first(5);
  ASSERT_EQ(Run(spec, &first, true).status().code(),
            absl::StatusCode::kCancelled);
  auto names = ListDirectory(journal_);
  ASSERT_TRUE(names.ok());
  std::vector<std::string> entries;
  for (const auto& n : *names) {
    if (absl::EndsWith(n, ".safetensors")) entries.push_back(n);
  }
  ASSERT_EQ(entries.size(), 5u);
  // One truncated, one with a flipped data byte, one empty.
  const std::string truncated = JoinPath(journal_, entries[1]);
  std::string bytes = ReadFileOrDie(truncated);
  WriteFileOrDie(truncated, bytes.substr(0, bytes.size() / 2));
  const std::string flipped = JoinPath(journal_, entries[2]);
  bytes = ReadFileOrDie(flipped);
  bytes[bytes.size() - 3] ^= 0x40;
  WriteFileOrDie(flipped, bytes);
  WriteFileOrDie(JoinPath(journal_, entries[4]), "");

  Recorder second;
  auto report = Run(spec, &second, true);
  ASSERT_TRUE(report.ok()) << report.status();
  EXPECT_EQ((*report)["totals"]["resumed_tensors"], 2);
  EXPECT_EQ(second.actions["resumed"], 2);
  EXPECT_TRUE(second.Warned("is unusable, computing it again"));
  ExpectSameAsReference(ref, *report);
}

TEST(FusionJournal, EntriesRoundTrip) {
  TempDir tmp;
  const nlohmann::json id = {{"spec", "x"}};
  auto opened = FusionJournal::Open(tmp.Join("j"), id);
  ASSERT_TRUE(opened.ok()) << opened.status();
  EXPECT_FALSE(opened->discarded);
  JournalEntry e;
  e.index = 12;
  e.name = "w";
  e.fused = std::string("\x00\x01\x02\xff", 4);
  e.patches.push_back(
      {"stitched",
       PackedPatchEntry{{2, 5}, std::string("\x03\x00", 2), "abcdefgh"},
       {1}});
  e.report = {{"kept", 2}, {"seconds", 0.5}};
  e.warnings = {"careful"};
  e.errors = {{0.1, 1.0 / 3}};
  ASSERT_TRUE(opened->journal->Write(e).ok());
  ASSERT_FALSE(opened->journal->Has(11));
  auto back = opened->journal->Read(12);
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_EQ(back->name, "w");
  EXPECT_EQ(back->fused, e.fused);
  ASSERT_EQ(back->patches.size(), 1u);
  EXPECT_EQ(back->patches[0].packed.shape, (std::vector<int64_t>{2, 5}));
  EXPECT_EQ(back->patches[0].packed.mask, std::string("\x03\x00", 2));
  EXPECT_EQ(back->patches[0].packed.values, "abcdefgh");
  EXPECT_EQ(back->report, e.report);
  EXPECT_EQ(back->warnings, e.warnings);
  EXPECT_EQ(back->errors, e.errors);  // doubles exactly
  EXPECT_EQ(FusionJournal::Open(tmp.Join("j"), id)->entries, 1);
  auto other = FusionJournal::Open(tmp.Join("j"), {{"spec", "y"}});
  ASSERT_TRUE(other.ok());
  EXPECT_TRUE(other->discarded);
  EXPECT_FALSE(other->journal->Has(12));
}

// Issue #10 point 14: a journal cannot fill the data volume.
TEST(FusionJournal, LimitsRefuseEntriesAndWriteNothing) {
  TempDir tmp;
  JournalEntry e;
  e.index = 3;
  e.name = "w";
  e.fused = std::string(4000, 'x');
  e.report = {{"kept", 1}};
  // Over the byte budget: refused, no file.
  auto small = FusionJournal::Open(tmp.Join("a"), {{"spec", "x"}},
                                   JournalLimits{2000, 0});
  ASSERT_TRUE(small.ok()) << small.status();
  absl::Status s = small->journal->Write(e);
  EXPECT_EQ(s.code(), absl::StatusCode::kResourceExhausted) << s;
  EXPECT_TRUE(absl::StrContains(s.message(), "budget of 2000 bytes")) << s;
  EXPECT_FALSE(small->journal->Has(3));
  EXPECT_EQ(*ListDirectory(tmp.Join("a")),
            std::vector<std::string>{"manifest.json"});
  // A budget that fits one entry takes one, not two.
  auto one = FusionJournal::Open(tmp.Join("b"), {{"spec", "x"}},
                                 JournalLimits{6000, 0});
  ASSERT_TRUE(one.ok());
  const uint64_t manifest = one->journal->bytes();
  EXPECT_GT(manifest, 0u);  // the manifest counts
  ASSERT_TRUE(one->journal->Write(e).ok());
  e.index = 4;
  EXPECT_EQ(one->journal->Write(e).code(),
            absl::StatusCode::kResourceExhausted);
  EXPECT_LE(*JournalBytes(tmp.Join("b")), 6000u);
  // Reopened, the entries already there count against the budget.
  auto again = FusionJournal::Open(tmp.Join("b"), {{"spec", "x"}},
                                   JournalLimits{6000, 0});
  ASSERT_TRUE(again.ok());
  EXPECT_EQ(again->journal->bytes(), *JournalBytes(tmp.Join("b")));
  EXPECT_EQ(again->journal->Write(e).code(),
            absl::StatusCode::kResourceExhausted);
  // A reserve larger than the free space: refused, naming the store.
  auto reserve = FusionJournal::Open(tmp.Join("c"), {{"spec", "x"}},
                                     JournalLimits{0, uint64_t{1} << 62});
  ASSERT_TRUE(reserve.ok());
  s = reserve->journal->Write(e);
  EXPECT_EQ(s.code(), absl::StatusCode::kResourceExhausted) << s;
  EXPECT_TRUE(absl::StrContains(s.message(), "kept for the job store")) << s;
  EXPECT_FALSE(reserve->journal->Has(4));
}

// A job whose journal budget runs out goes on without it, and succeeds
// with outputs identical to an unjournalled run's.
TEST_F(FusionJournalTest, BudgetSpentJobContinuesWithoutTheJournal) {
  const FusionSpec spec = Spec();
  const nlohmann::json ref = Reference(spec);
  auto resolver = UriResolver::Create({tmp_.path()});
  ASSERT_TRUE(resolver.ok());
  Recorder sink;
  RunOptions options;
  options.progress = &sink;
  options.journal_dir = journal_;
  options.journal_max_bytes = 1;  // not even one entry
  auto report = RunFusionJob(spec, *resolver, options);
  ASSERT_TRUE(report.ok()) << report.status();
  EXPECT_TRUE(sink.Warned("continuing without the journal"));
  EXPECT_TRUE(sink.Warned("budget of 1 bytes"))
      << ::testing::PrintToString(sink.warnings);
  EXPECT_EQ(JournalEntries(), 0);
  ExpectSameAsReference(ref, *report);
}

// Hands out two "devices", both the CPU, in turn; records the estimates.
class RoundRobinScheduler : public TensorDeviceScheduler {
 public:
  class Lease : public DeviceLease {
   public:
    explicit Lease(std::string name) : name_(std::move(name)) {}
    std::string device() const override { return "cpu"; }
    std::string name() const override { return name_; }

   private:
    const std::string name_;
  };
  absl::StatusOr<std::unique_ptr<DeviceLease>> Acquire(
      const std::string& tensor, int64_t estimated_bytes) override {
    estimates[tensor] = estimated_bytes;
    return std::make_unique<Lease>(next_++ % 2 == 0 ? "cpu-a" : "cpu-b");
  }
  std::map<std::string, int64_t> estimates;

 private:
  int next_ = 0;
};

using FusionSchedulerTest = FusionJournalTest;

TEST_F(FusionSchedulerTest, TensorsSpreadOverDevicesWithIdenticalOutputs) {
  const FusionSpec spec = Spec();
  const nlohmann::json ref = Reference(spec);
  RoundRobinScheduler scheduler;
  Recorder sink;
  auto report = Run(spec, &sink, /*journal=*/false, &scheduler);
  ASSERT_TRUE(report.ok()) << report.status();
  // The 10 floating-point tensors alternate; the position ids are copied.
  EXPECT_EQ(sink.devices["fused@cpu-a"], 5);
  EXPECT_EQ(sink.devices["fused@cpu-b"], 5);
  EXPECT_EQ(sink.devices["copied@cpu"], 1);
  EXPECT_EQ((*report)["totals"]["device"], "cpu-a,cpu-b");
  ExpectSameAsReference(ref, *report);
  // Only fused tensors ask for a device; a calibrated one needs more.
  ASSERT_EQ(scheduler.estimates.size(), 10u);
  EXPECT_EQ(scheduler.estimates.count("model.position_ids"), 0u);
  const int64_t q0 =
      scheduler.estimates["model.layers.0.self_attn.q_proj.weight"];
  const int64_t q1 =
      scheduler.estimates["model.layers.1.self_attn.q_proj.weight"];
  const int64_t q2 =
      scheduler.estimates["model.layers.2.self_attn.q_proj.weight"];
  EXPECT_GE(q2, kHidden * kHidden * 4 * 5);
  // The Hessians' share (issue #11, item 2): the first user of the key
  // prepares both tasks' Hessians (damped H + U, 2 c^2 e each, cached); one
  // preparation's scratch (3 c^2 e) fits in the kernel temporaries it
  // precedes (4 n e, n = c^2 here). Its alias (layers.1) finds them cached:
  // the live entries count, with their diagonals.
  const int64_t c2e = kHidden * kHidden * 4;
  EXPECT_EQ(q0 - q2, 2 * 2 * c2e);
  EXPECT_EQ(q1 - q2, 2 * (2 * c2e + kHidden * 4));  // + each diag(H^-1)
}

TEST_F(FusionSchedulerTest, ResumedTensorsNeedNoLease) {
  const FusionSpec spec = Spec();
  Recorder first(4);
  ASSERT_EQ(Run(spec, &first, /*journal=*/true).status().code(),
            absl::StatusCode::kCancelled);
  RoundRobinScheduler scheduler;
  Recorder second;
  ASSERT_TRUE(Run(spec, &second, /*journal=*/true, &scheduler).ok());
  EXPECT_EQ(second.devices["resumed@cpu"], 4);
  EXPECT_EQ(scheduler.estimates.size(), 6u);
}

TEST_F(FusionSchedulerTest, TensorLargerThanEveryBudgetFailsTheJob) {
  // Estimates: q_proj 16x16 (calibrated) 23040 bytes; mlp 24x16 29952.
  auto pool = jobs::DevicePool::Create({{"cpu", "cpu", "cpu", 25000}});
  ASSERT_TRUE(pool.ok());
  jobs::PoolScheduler scheduler(pool->get(), {0}, nullptr);
  Recorder sink;
  auto report = Run(Spec(), &sink, /*journal=*/false, &scheduler);
  ASSERT_EQ(report.status().code(), absl::StatusCode::kResourceExhausted)
      << report.status();
  const std::string m(report.status().message());
  EXPECT_TRUE(absl::StrContains(m, "tensor 'model.layers.0.mlp.")) << m;
  EXPECT_TRUE(absl::StrContains(m, "29952")) << m;
  EXPECT_TRUE(absl::StrContains(m, "cpu: 25000")) << m;
  EXPECT_FALSE(PathExists(out_));
  EXPECT_EQ((*pool)->Reserved(0), 0);
}

}  // namespace
}  // namespace tailor
