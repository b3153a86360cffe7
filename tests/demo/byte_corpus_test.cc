#include "demo/byte_corpus.h"

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <gtest/gtest.h>

#include <string>

#include "absl/strings/match.h"
#include "testing/test_util.h"

namespace tailor {
namespace {

using ::tailor::testing::TempDir;
using ::tailor::testing::WriteFileOrDie;

CorpusOptions SmallChunks() {
  CorpusOptions o;
  o.chunk_tokens = 4;
  o.heldout_every = 3;
  return o;
}

std::vector<int64_t> ToVector(const at::Tensor& t) {
  return {t.data_ptr<int64_t>(), t.data_ptr<int64_t>() + t.numel()};
}

TEST(ByteCorpusTest, SplitsChunksDeterministically) {
  TempDir dir;
  WriteFileOrDie(dir.Join("a.txt"), "abcdefghij");   // 10 bytes + end = 11
  WriteFileOrDie(dir.Join("b.txt"), "0123456789A");  // 11 bytes + end = 12
  CorpusSource source{"t", "test", {dir.Join("a.txt"), dir.Join("b.txt")}};
  absl::StatusOr<ByteCorpus> corpus = ByteCorpus::Load(source, SmallChunks());
  ASSERT_TRUE(corpus.ok()) << corpus.status();
  EXPECT_EQ(corpus->files_used(), 2);
  // Stream: "abcdefghij" E "0123456789A" E (23 tokens), chunks of 4:
  // [abcd][efgh][ij E 0][1234][5678][9A E] -> chunks 2 and 5 held out.
  const int64_t e = kEndOfDocumentToken;
  std::vector<int64_t> heldout = {'i', 'j', e, '0', '9', 'A', e};
  std::vector<int64_t> train = {'a', 'b', 'c', 'd', 'e', 'f', 'g', 'h',
                                '1', '2', '3', '4', '5', '6', '7', '8'};
  EXPECT_EQ(ToVector(corpus->heldout()), heldout);
  EXPECT_EQ(ToVector(corpus->train()), train);

  absl::StatusOr<ByteCorpus> again = ByteCorpus::Load(source, SmallChunks());
  ASSERT_TRUE(again.ok());
  EXPECT_EQ(again->digest(), corpus->digest());
  CorpusOptions other = SmallChunks();
  other.heldout_every = 2;
  absl::StatusOr<ByteCorpus> split2 = ByteCorpus::Load(source, other);
  ASSERT_TRUE(split2.ok());
  EXPECT_NE(split2->digest(), corpus->digest());
}

TEST(ByteCorpusTest, MaxBytesTakesWholeFilesInOrder) {
  TempDir dir;
  WriteFileOrDie(dir.Join("a"), std::string(30, 'a'));
  WriteFileOrDie(dir.Join("b"), std::string(30, 'b'));
  CorpusSource source{"t", "test", {dir.Join("a"), dir.Join("b")}};
  CorpusOptions o = SmallChunks();
  o.max_bytes = 40;  // a (31 with its end) fits; b would pass 40
  absl::StatusOr<ByteCorpus> corpus = ByteCorpus::Load(source, o);
  ASSERT_TRUE(corpus.ok()) << corpus.status();
  EXPECT_EQ(corpus->files_used(), 1);
  EXPECT_EQ(corpus->train().numel() + corpus->heldout().numel(), 31);
}

TEST(ByteCorpusTest, ErrorsNameTheProblem) {
  TempDir dir;
  CorpusSource missing{"t", "test", {dir.Join("nope")}};
  absl::Status s = ByteCorpus::Load(missing).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kNotFound);
  EXPECT_TRUE(absl::StrContains(s.message(), dir.Join("nope"))) << s;

  WriteFileOrDie(dir.Join("tiny"), "abc");
  CorpusSource tiny{"t", "test", {dir.Join("tiny")}};
  s = ByteCorpus::Load(tiny).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(absl::StrContains(s.message(), "chunks")) << s;

  EXPECT_EQ(ByteCorpus::Load(CorpusSource{"t", "test", {}}).status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST(ByteCorpusTest, SamplingAndWindows) {
  absl::StatusOr<ByteCorpus> corpus =
      ByteCorpus::FromBytes("t", std::string(200, 'x') + "yz", SmallChunks());
  ASSERT_TRUE(corpus.ok()) << corpus.status();
  at::Generator g1 = at::detail::createCPUGenerator(7);
  at::Generator g2 = at::detail::createCPUGenerator(7);
  const at::Tensor a = corpus->SampleTrain(5, 6, g1);
  const at::Tensor b = corpus->SampleTrain(5, 6, g2);
  ASSERT_EQ(a.sizes(), (std::vector<int64_t>{5, 6}));
  EXPECT_TRUE(at::equal(a, b));
  // Every window is a contiguous slice of the training stream.
  const std::vector<int64_t> stream = ToVector(corpus->train());
  for (int64_t r = 0; r < 5; ++r) {
    const std::vector<int64_t> w = ToVector(a[r].contiguous());
    bool found = false;
    for (size_t s = 0; s + w.size() <= stream.size() && !found; ++s) {
      found = std::equal(w.begin(), w.end(), stream.begin() + s);
    }
    EXPECT_TRUE(found) << "row " << r;
  }
  const at::Tensor windows = ByteCorpus::Windows(corpus->heldout(), 3, 0);
  EXPECT_EQ(windows.size(0), corpus->heldout().numel() / 3);
  EXPECT_TRUE(at::equal(windows.reshape({-1}),
                        corpus->heldout().narrow(0, 0, windows.numel())));
  EXPECT_EQ(ByteCorpus::Windows(corpus->heldout(), 3, 2).size(0), 2);
}

// The demo's corpora come from Debian packages that scripts/setup installs;
// they must be there and distinct.
TEST(ByteCorpusTest, DemoSourcesExist) {
  for (auto source :
       {ProseCorpusSource(), PythonCorpusSource(), CCorpusSource()}) {
    ASSERT_TRUE(source.ok()) << source.status();
    EXPECT_GE(source->files.size(), 5u) << source->name;
    absl::StatusOr<ByteCorpus> corpus = ByteCorpus::Load(*source);
    ASSERT_TRUE(corpus.ok()) << corpus.status();
    EXPECT_GT(corpus->heldout().numel(), 10000) << source->name;
  }
}

}  // namespace
}  // namespace tailor
