// Streams every tensor of a generated checkpoint several times larger than
// the memory cap, and checks the process's peak resident set stays under it.

#include <ATen/ATen.h>
#include <gtest/gtest.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstring>
#include <limits>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "fusion/apply_patch.h"
#include "fusion/fusion_job.h"
#include "fusion/patch.h"
#include "io/checkpoint.h"
#include "io/checkpoint_writer.h"
#include "testing/test_util.h"
#include "util/cpu_tuning.h"
#include "util/file_util.h"
#include "util/memory.h"

// AddressSanitizer's quarantine would otherwise keep freed tensors resident.
extern "C" const char* __asan_default_options() {
  return "quarantine_size_mb=4";
}

namespace tailor {
namespace {

constexpr int64_t kElements = 8 << 20;          // 16 MiB per BF16 tensor
constexpr int kTensors = 32;                    // 512 MiB checkpoint
constexpr uint64_t kShardBytes = 128ull << 20;  // 4 shards
// Cap on the growth of peak RSS while streaming (the process's own baseline,
// LibTorch loaded, comes before): four float32 copies of one tensor.
constexpr long kCapKiB = 128 << 10;

// The allocator policy is the binary's choice (tailorctl and tailord pick
// streaming; RunFusionJob leaves it alone): this binary picks it as they do.
const int kStreamingAllocator = [] {
  ConfigureAllocatorForStreaming();
  return 0;
}();

using ::tailor::testing::ReadFileOrDie;

int64_t KeepCountForTest(int64_t n) { return (n + 5) / 10; }  // round(0.1 n)

long PeakRssKiB() {
  struct rusage usage;
  getrusage(RUSAGE_SELF, &usage);
  return usage.ru_maxrss;
}

// BF16 bit pattern of tensor i, element j: small integers, exact in BF16.
uint16_t Pattern(int i, int64_t j) {
  float f = static_cast<float>((i * 7 + j) % 64);
  uint32_t bits;
  std::memcpy(&bits, &f, 4);
  return static_cast<uint16_t>(bits >> 16);
}

// Generates, in a child process, a checkpoint of `count` BF16 tensors of
// `elements` each whose element j of tensor i is Pattern(i + shift, j),
// but the element at each `pokes` index (of every tensor) has its bits.
void GenerateInChild(
    const std::string& out, int count, int64_t elements, int shift,
    uint64_t shard_bytes,
    const std::vector<std::pair<int64_t, uint16_t>>& pokes = {}) {
  pid_t pid = ::fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    std::vector<TensorInfo> layout;
    for (int i = 0; i < count; ++i) {
      layout.push_back({absl::StrCat("layers.", i, ".weight"),
                        DType::kBF16,
                        {elements / 512, 512},
                        elements,
                        static_cast<uint64_t>(elements) * 2,
                        ""});
    }
    CheckpointWriterOptions options;
    options.max_shard_bytes = shard_bytes;
    auto writer = CheckpointWriter::Create(out, layout, options);
    if (!writer.ok()) ::_exit(1);
    std::vector<uint16_t> buffer(elements);
    for (int i = 0; i < count; ++i) {
      for (int64_t j = 0; j < elements; ++j) buffer[j] = Pattern(i + shift, j);
      for (const auto& [j, bits] : pokes) buffer[j] = bits;
      if (!(*writer)
               ->WriteRaw(
                   layout[i].name,
                   absl::string_view(reinterpret_cast<char*>(buffer.data()),
                                     buffer.size() * 2))
               .ok()) {
        ::_exit(2);
      }
    }
    ::_exit((*writer)->Commit().ok() ? 0 : 3);
  }
  int status = 0;
  ASSERT_EQ(::waitpid(pid, &status, 0), pid);
  ASSERT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << status;
}

// CTest runs it in a process of its own (tests/CMakeLists.txt); first in
// this file so that a run of the whole binary measures it before the higher
// peaks of the tests below (ru_maxrss only grows).
TEST(StreamMemoryTest, TaskArithmeticPeakRssIsBoundedByTheChunkNotTheTensor) {
  constexpr int64_t kBig = 16 << 20;  // one 32 MiB BF16 tensor (64 MiB f32)
  constexpr long kTaCapKiB = 48 << 10;
  tailor::testing::TempDir dir;
  GenerateInChild(dir.Join("base"), 1, kBig, 0, 1ull << 30);
  GenerateInChild(dir.Join("ft"), 1, kBig, 1, 1ull << 30);
  FusionSpec spec;
  spec.pretrained_uri = dir.Join("base");
  spec.tasks.push_back(TaskSpec{"ft", dir.Join("ft"), "", "", {}, {}});
  spec.method = Method::kTaskArithmetic;
  spec.lambda = 0.5;
  spec.output_uri = dir.Join("out");
  spec.device = "cpu";
  auto resolver = UriResolver::Create({dir.path()});
  ASSERT_TRUE(resolver.ok());
  RunOptions options;  // default chunk: 256 Ki elements
  const long before = PeakRssKiB();
  auto report = RunFusionJob(spec, *resolver, options);
  const long after = PeakRssKiB();
  ASSERT_TRUE(report.ok()) << report.status();
  std::cout << "task arithmetic on one " << (kBig * 2 >> 20)
            << " MiB BF16 tensor: peak RSS before " << (before >> 10)
            << " MiB, after " << (after >> 10) << " MiB (growth cap "
            << (kTaCapKiB >> 10) << " MiB; the tensor in float32 is "
            << (kBig * 4 >> 20) << " MiB)\n";
  // A tensor computed whole needs several float32 copies (> 256 MiB).
  EXPECT_LT(after - before, kTaCapKiB);
  // The result is right: pattern(1, j) - pattern(0, j) scaled by 0.5,
  // spot-checked.
  auto out = Checkpoint::Open(spec.output_uri);
  ASSERT_TRUE(out.ok()) << out.status();
  auto t = (*out)->Read("layers.0.weight");
  ASSERT_TRUE(t.ok()) << t.status();
  for (int64_t j : {int64_t{0}, int64_t{63}, int64_t{777777}, kBig - 1}) {
    const float pre = static_cast<float>(j % 64);
    const float ft = static_cast<float>((7 + j) % 64);
    EXPECT_EQ(t->view({-1})[j].item<float>(), pre + (ft - pre) * 0.5f) << j;
  }
  EXPECT_EQ((*report)["totals"]["kept"].get<int64_t>(), kBig);
}

// Magnitude and TIES stream too (two radix passes for the per-tensor
// threshold, then the output pass): the same bound. Each in a process of
// its own (tests/CMakeLists.txt).
void ExpectThresholdMethodBounded(Method method) {
  constexpr int64_t kBig = 16 << 20;  // one 32 MiB BF16 tensor (64 MiB f32)
  constexpr long kCapKiB = 48 << 10;
  tailor::testing::TempDir dir;
  GenerateInChild(dir.Join("base"), 1, kBig, 0, 1ull << 30);
  GenerateInChild(dir.Join("ft"), 1, kBig, 1, 1ull << 30);
  FusionSpec spec;
  spec.pretrained_uri = dir.Join("base");
  spec.tasks.push_back(TaskSpec{"ft", dir.Join("ft"), "", "", {}, {}});
  spec.method = method;
  spec.tailor.keep_ratio = 0.1;
  spec.density = 0.1;
  spec.output_uri = dir.Join("out");
  spec.device = "cpu";
  auto resolver = UriResolver::Create({dir.path()});
  ASSERT_TRUE(resolver.ok());
  RunOptions options;  // default chunk: 256 Ki elements
  const long before = PeakRssKiB();
  auto report = RunFusionJob(spec, *resolver, options);
  const long after = PeakRssKiB();
  ASSERT_TRUE(report.ok()) << report.status();
  std::cout << MethodName(method) << " on one " << (kBig * 2 >> 20)
            << " MiB BF16 tensor: peak RSS before " << (before >> 10)
            << " MiB, after " << (after >> 10) << " MiB (growth cap "
            << (kCapKiB >> 10) << " MiB)\n";
  EXPECT_LT(after - before, kCapKiB);
  // d = pattern(1, j) - pattern(0, j) is 7, or -57 where j % 64 >= 57 (a
  // 7/64 share): the k = round(0.1 n) kept entries are the first k of the
  // -57s in index order (ties to the lower index); fused = pre + d there.
  const int64_t k = KeepCountForTest(kBig);
  EXPECT_EQ((*report)["totals"]["kept"].get<int64_t>(), k);
  auto out = Checkpoint::Open(spec.output_uri);
  ASSERT_TRUE(out.ok()) << out.status();
  auto t = (*out)->Read("layers.0.weight");
  ASSERT_TRUE(t.ok()) << t.status();
  const int64_t last_kept = (k - 1) / 7 * 64 + 57 + (k - 1) % 7;
  for (int64_t j : {int64_t{57}, int64_t{63}, last_kept, last_kept + 64,
                    int64_t{0}, kBig - 1}) {
    const float pre = static_cast<float>(j % 64);
    const float ft = static_cast<float>((7 + j) % 64);
    const bool kept = j % 64 >= 57 && j <= last_kept;
    EXPECT_EQ(t->view({-1})[j].item<float>(), kept ? ft : pre) << j;
  }
}

TEST(StreamMemoryTest, MagnitudePeakRssIsBoundedByTheChunkNotTheTensor) {
  ExpectThresholdMethodBounded(Method::kMagnitude);
}

TEST(StreamMemoryTest, TiesPeakRssIsBoundedByTheChunkNotTheTensor) {
  ExpectThresholdMethodBounded(Method::kTies);
}

TEST(StreamMemoryTest, ReaderPeakRssStaysUnderCapForCheckpointLargerThanCap) {
  tailor::testing::TempDir dir;
  const std::string out = dir.Join("big");
  GenerateInChild(out, kTensors, kElements, 0, kShardBytes);
  auto ckpt = Checkpoint::Open(out);
  ASSERT_TRUE(ckpt.ok()) << ckpt.status();
  ASSERT_EQ((*ckpt)->files().size(), 4u);
  const uint64_t total = (*ckpt)->TotalBytes();
  ASSERT_GE(total, static_cast<uint64_t>(kCapKiB) * 1024 * 4)
      << "the checkpoint must be several times the cap";

  const long before = PeakRssKiB();
  for (int i = 0; i < kTensors; ++i) {
    const std::string name = absl::StrCat("layers.", i, ".weight");
    auto t = (*ckpt)->Read(name);  // BF16 -> float32: 32 MiB
    ASSERT_TRUE(t.ok()) << t.status();
    ASSERT_EQ(t->scalar_type(), at::kFloat);
    // Content check on a few elements.
    for (int64_t j : {int64_t{0}, int64_t{12345}, kElements - 1}) {
      ASSERT_EQ(t->view({-1})[j].item<float>(),
                static_cast<float>((i * 7 + j) % 64))
          << name << "[" << j << "]";
    }
  }
  const long after = PeakRssKiB();
  std::cout << "checkpoint " << (total >> 20) << " MiB; peak RSS before "
            << (before >> 10) << " MiB, after streaming " << (after >> 10)
            << " MiB (growth cap " << (kCapKiB >> 10) << " MiB)\n";
  EXPECT_LT(after - before, kCapKiB);
}

TEST(StreamMemoryTest, FusionJobPeakRssIsIndependentOfModelSize) {
  constexpr int kCount = 64;
  constexpr int64_t kJobElements = 2 << 20;  // 4 MiB BF16 per tensor
  constexpr long kJobCapKiB = 160 << 10;
  tailor::testing::TempDir dir;
  GenerateInChild(dir.Join("base"), kCount, kJobElements, 0, 64ull << 20);
  GenerateInChild(dir.Join("ft"), kCount, kJobElements, 1, 64ull << 20);
  FusionSpec spec;
  spec.pretrained_uri = dir.Join("base");
  spec.tasks.push_back(TaskSpec{"ft", dir.Join("ft"), "", "", {}, {}});
  spec.method = Method::kMagnitude;
  spec.output_uri = dir.Join("out");
  spec.patch_uri = dir.Join("patch.safetensors");
  spec.device = "cpu";
  auto resolver = UriResolver::Create({dir.path()});
  ASSERT_TRUE(resolver.ok());
  const long before = PeakRssKiB();
  auto report = RunFusionJob(spec, *resolver);
  const long after = PeakRssKiB();
  ASSERT_TRUE(report.ok()) << report.status();
  const uint64_t inputs = 2ull * kCount * kJobElements * 2;
  std::cout << "fusion inputs " << (inputs >> 20) << " MiB (+ output "
            << (inputs >> 21) << " MiB); peak RSS before " << (before >> 10)
            << " MiB, after " << (after >> 10) << " MiB (growth cap "
            << (kJobCapKiB >> 10) << " MiB)\n";
  ASSERT_GE(inputs, static_cast<uint64_t>(kJobCapKiB) * 1024 * 3);
  EXPECT_EQ((*report)["totals"]["kept"].get<int64_t>(),
            kCount * KeepCountForTest(kJobElements));
  EXPECT_LT(after - before, kJobCapKiB);
}

// Applying a patch to one large tensor streams it (StreamPatchedTensor),
// and copies the other in pieces: peak RSS grows by a few chunks, not by
// the float32 copies the whole-tensor path makes (pre, its clone, the mask,
// the indices: > 150 MiB here) nor by the copied tensor (32 MiB). The patch is
// written in a child too, so that its packed entry is not part of this
// process's peak before the measurement.
TEST(StreamMemoryTest, ApplyPatchPeakRssIsBoundedByTheChunkNotTheTensor) {
  constexpr int64_t kBig = 16 << 20;  // one 32 MiB BF16 tensor (64 MiB f32)
  constexpr long kApplyCapKiB = 24 << 10;
  tailor::testing::TempDir dir;
  // layers.1 is not patched: copied, in pieces too.
  GenerateInChild(dir.Join("base"), 2, kBig, 0, 1ull << 30);
  const std::string patch = dir.Join("patch.safetensors");
  pid_t pid = ::fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    // Every 8th element kept (mask byte 0x01), delta 1.0: 2 MiB of mask
    // and 8 MiB of values.
    PackedPatchEntry entry;
    entry.shape = {kBig / 512, 512};
    entry.mask.assign(kBig / 8, '\x01');
    std::vector<float> values(kBig / 8, 1.0f);
    entry.values.assign(reinterpret_cast<const char*>(values.data()),
                        values.size() * sizeof(float));
    auto writer = PatchWriter::Create(patch);
    if (!writer.ok()) ::_exit(1);
    if (!(*writer)
             ->AddPacked("layers.0.weight", entry, DType::kBF16,
                         nlohmann::json::object())
             .ok()) {
      ::_exit(2);
    }
    PatchMetadata md;
    md.method = "tailor";
    ::_exit((*writer)->Finish(md).ok() ? 0 : 3);
  }
  int status = 0;
  ASSERT_EQ(::waitpid(pid, &status, 0), pid);
  ASSERT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << status;
  auto resolver = UriResolver::Create({dir.path()});
  ASSERT_TRUE(resolver.ok());
  const long before = PeakRssKiB();
  absl::Status s = ApplyPatch(dir.Join("base"), patch, dir.Join("out"), false,
                              *resolver);  // default chunk: 256 Ki elements
  const long after = PeakRssKiB();
  ASSERT_TRUE(s.ok()) << s;
  std::cout << "apply-patch on one " << (kBig * 2 >> 20)
            << " MiB BF16 tensor: peak RSS before " << (before >> 10)
            << " MiB, after " << (after >> 10) << " MiB (growth cap "
            << (kApplyCapKiB >> 10) << " MiB)\n";
  EXPECT_LT(after - before, kApplyCapKiB);
  auto out = Checkpoint::Open(dir.Join("out"));
  ASSERT_TRUE(out.ok()) << out.status();
  auto t = (*out)->Read("layers.0.weight");
  ASSERT_TRUE(t.ok()) << t.status();
  for (int64_t j : {int64_t{0}, int64_t{1}, int64_t{8}, int64_t{777777},
                    int64_t{777776}, kBig - 8, kBig - 1}) {
    const float pre = static_cast<float>(j % 64);
    EXPECT_EQ(t->view({-1})[j].item<float>(), j % 8 == 0 ? pre + 1 : pre) << j;
  }
  auto base = Checkpoint::Open(dir.Join("base"));
  ASSERT_TRUE(base.ok()) << base.status();
  EXPECT_EQ(*(*out)->ReadRaw("layers.1.weight"),
            *(*base)->ReadRaw("layers.1.weight"));
}

// Issue #11 point 4: with a journal (tailord's jobs always have one) a
// streamed tensor's stored bytes are spooled to it chunk by chunk, so the
// job stays bounded by the chunk (they were kept whole for the entry:
// +32 MiB here) and a second run resumes from the journal.
TEST(StreamMemoryTest, JournalledMergePeakRssIsBoundedByTheChunk) {
  constexpr int64_t kBig = 16 << 20;  // one 32 MiB BF16 tensor
  constexpr long kCap = 24 << 10;
  tailor::testing::TempDir dir;
  GenerateInChild(dir.Join("base"), 1, kBig, 0, 1ull << 30);
  GenerateInChild(dir.Join("ft"), 1, kBig, 1, 1ull << 30);
  FusionSpec spec;
  spec.pretrained_uri = dir.Join("base");
  spec.tasks.push_back(TaskSpec{"ft", dir.Join("ft"), "", "", {}, {}});
  spec.method = Method::kTaskArithmetic;
  spec.lambda = 0.5;
  spec.output_uri = dir.Join("out");
  spec.overwrite = true;
  spec.device = "cpu";
  auto resolver = UriResolver::Create({dir.path()});
  ASSERT_TRUE(resolver.ok());
  RunOptions options;
  options.journal_dir = dir.Join("journal");
  const long before = PeakRssKiB();
  auto report = RunFusionJob(spec, *resolver, options);
  const long after = PeakRssKiB();
  ASSERT_TRUE(report.ok()) << report.status();
  std::cout << "journalled task arithmetic on one " << (kBig * 2 >> 20)
            << " MiB BF16 tensor: peak RSS before " << (before >> 10)
            << " MiB, after " << (after >> 10) << " MiB (growth cap "
            << (kCap >> 10) << " MiB)\n";
  EXPECT_LT(after - before, kCap);
  const std::string first = tailor::testing::ReadFileOrDie(
      JoinPath(spec.output_uri, "model.safetensors"));
  auto again = RunFusionJob(spec, *resolver, options);
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_EQ((*again)["totals"]["resumed_tensors"].get<int64_t>(), 1);
  EXPECT_EQ(tailor::testing::ReadFileOrDie(
                JoinPath(spec.output_uri, "model.safetensors")),
            first);
}

// Issue #11: a streamed magnitude, TIES or SPIDER tensor holding a
// non-finite value stays streamed (it was computed whole, several float32
// copies of the tensor, which the working-memory estimate did not count):
// an overflow of ft - pre to Inf gives the whole-tensor path's result (the
// bytes are compared in streamed_merge_test), a NaN input its error, both
// bounded by the chunk.
TEST(StreamMemoryTest, NonFiniteThresholdMergesStayBoundedByTheChunk) {
  constexpr int64_t kBig = 16 << 20;  // one 32 MiB BF16 tensor (64 MiB f32)
  constexpr long kCap = 48 << 10;
  constexpr int64_t kOverflow = 1000, kNan = kBig - 5;
  tailor::testing::TempDir dir;
  // BF16 -3e38 and 3e38: their float32 difference overflows to +Inf.
  GenerateInChild(dir.Join("base"), 1, kBig, 0, 1ull << 30,
                  {{kOverflow, 0xff62}});
  GenerateInChild(dir.Join("ft"), 1, kBig, 1, 1ull << 30,
                  {{kOverflow, 0x7f62}});
  GenerateInChild(dir.Join("ft-nan"), 1, kBig, 1, 1ull << 30,
                  {{kOverflow, 0x7f62}, {kNan, 0x7fc0}});
  auto resolver = UriResolver::Create({dir.path()});
  ASSERT_TRUE(resolver.ok());
  RunOptions options;  // default chunk: 256 Ki elements
  const long before = PeakRssKiB();
  int run = 0;
  for (Method method : {Method::kMagnitude, Method::kTies, Method::kSpider}) {
    SCOPED_TRACE(MethodName(method));
    FusionSpec spec;
    spec.pretrained_uri = dir.Join("base");
    spec.tasks.push_back(TaskSpec{"ft", dir.Join("ft"), "", "", {}, {}});
    spec.method = method;
    spec.tailor.keep_ratio = 0.1;
    spec.density = 0.1;
    spec.output_uri = dir.Join(absl::StrCat("out", run++));
    spec.device = "cpu";
    auto report = RunFusionJob(spec, *resolver, options);
    ASSERT_TRUE(report.ok()) << report.status();
    if (method != Method::kSpider) {
      // The Inf delta ranks first (TIES: |D|; magnitude: its NaN min-max
      // score, Inf / Inf): kept, pre + Inf = Inf.
      EXPECT_EQ((*report)["totals"]["kept"].get<int64_t>(),
                KeepCountForTest(kBig));
      auto out = Checkpoint::Open(spec.output_uri);
      ASSERT_TRUE(out.ok()) << out.status();
      // One element (reading the tensor whole would be 64 MiB of RSS).
      uint16_t bits = 0;
      ASSERT_TRUE((*out)
                      ->ReadRawRange("layers.0.weight", kOverflow * 2, 2, &bits)
                      .ok());
      EXPECT_EQ(bits, 0x7f80);  // +Inf
    }
    if (method == Method::kMagnitude) {
      EXPECT_EQ(
          (*report)["tensors"][0]["tasks"][0].value("fallback_reason", ""),
          "compensation produced non-finite values")
          << report->dump();
    }
    spec.tasks[0].finetuned_uri = dir.Join("ft-nan");
    spec.output_uri = dir.Join(absl::StrCat("out", run++));
    auto refused = RunFusionJob(spec, *resolver, options);
    EXPECT_EQ(refused.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_EQ(refused.status().message(),
              "layers.0.weight: fine-tuned tensor contains NaN or Inf");
    EXPECT_FALSE(PathExists(spec.output_uri));
  }
  const long after = PeakRssKiB();
  std::cout << "magnitude, TIES and SPIDER on one " << (kBig * 2 >> 20)
            << " MiB BF16 tensor holding an overflow, then a NaN: peak RSS "
               "before "
            << (before >> 10) << " MiB, after " << (after >> 10)
            << " MiB (growth cap " << (kCap >> 10) << " MiB)\n";
  EXPECT_LT(after - before, kCap);
}

// Runs `spec` with `workers` in a child process (a fresh peak RSS) and
// returns the child's peak RSS, KiB; -1 if the job failed.
long ChildPeakRssKiB(const FusionSpec& spec, const std::string& root,
                     int workers) {
  int fds[2];
  if (::pipe(fds) != 0) return -1;
  pid_t pid = ::fork();
  if (pid < 0) return -1;
  if (pid == 0) {
    ::close(fds[0]);
    // As tailorctl fuse --workers N does: one BLAS thread per worker.
    ConfigureComputeThreads(workers, workers);
    auto resolver = UriResolver::Create({root});
    if (!resolver.ok()) ::_exit(1);
    RunOptions options;
    options.workers = workers;
    auto report = RunFusionJob(spec, *resolver, options);
    if (!report.ok()) ::_exit(2);
    const long peak = PeakRssKiB();
    if (::write(fds[1], &peak, sizeof(peak)) != sizeof(peak)) ::_exit(3);
    ::_exit(0);
  }
  ::close(fds[1]);
  long peak = -1;
  if (::read(fds[0], &peak, sizeof(peak)) != sizeof(peak)) peak = -1;
  ::close(fds[0]);
  int status = 0;
  ::waitpid(pid, &status, 0);
  if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) return -1;
  return peak;
}

// Issue #12: two workers compute two tensors at once, but the executor's
// memory bound keeps the peak within 1.5x of one worker's (8 layers of two
// 4 MiB BF16 tensors, magnitude fusion with a patch: computed whole).
TEST(StreamMemoryTest, WorkersPeakRssStaysWithinBoundOfOneWorker) {
  constexpr int kCount = 16;
  constexpr int64_t kJobElements = 2 << 20;
  tailor::testing::TempDir dir;
  GenerateInChild(dir.Join("base"), kCount, kJobElements, 0, 64ull << 20);
  GenerateInChild(dir.Join("ft"), kCount, kJobElements, 1, 64ull << 20);
  FusionSpec spec;
  spec.pretrained_uri = dir.Join("base");
  spec.tasks.push_back(TaskSpec{"ft", dir.Join("ft"), "", "", {}, {}});
  spec.method = Method::kMagnitude;
  spec.device = "cpu";
  spec.overwrite = true;
  spec.output_uri = dir.Join("out1");
  spec.patch_uri = dir.Join("patch1.safetensors");
  const long one = ChildPeakRssKiB(spec, dir.path(), 1);
  spec.output_uri = dir.Join("out2");
  spec.patch_uri = dir.Join("patch2.safetensors");
  const long two = ChildPeakRssKiB(spec, dir.path(), 2);
  ASSERT_GT(one, 0);
  ASSERT_GT(two, 0);
  std::cout << "peak RSS, 16 x 4 MiB BF16 tensors: 1 worker " << (one >> 10)
            << " MiB, 2 workers " << (two >> 10) << " MiB\n";
  EXPECT_LE(two, one * 3 / 2);
  EXPECT_EQ(ReadFileOrDie(dir.Join("patch1.safetensors")),
            ReadFileOrDie(dir.Join("patch2.safetensors")));
}

}  // namespace
}  // namespace tailor
