#include "io/checkpoint_writer.h"

#include <ATen/ATen.h>
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <limits>

#include "absl/strings/match.h"
#include "io/checkpoint.h"
#include "io/tensor_convert.h"
#include "nlohmann/json.hpp"
#include "testing/test_util.h"
#include "util/file_util.h"
#include "util/staged_output.h"

namespace tailor {
namespace {

using ::tailor::testing::BitEqual;
using ::tailor::testing::RawTensor;
using ::tailor::testing::ReadFileOrDie;
using ::tailor::testing::SerializeSafetensors;
using ::tailor::testing::TempDir;
using ::tailor::testing::ToRaw;
using ::tailor::testing::WriteFileOrDie;
using ::tailor::testing::WriteShardedCheckpoint;

// Copies every tensor of `src` into a writer over `src`'s layout.
absl::Status CopyAll(const Checkpoint& src, const std::string& out,
                     const CheckpointWriterOptions& options, bool raw) {
  auto writer = CheckpointWriter::Create(out, src.tensors(), options);
  if (!writer.ok()) return writer.status();
  for (const TensorInfo& t : src.tensors()) {
    absl::Status s;
    if (raw || !ToScalarType(t.dtype).has_value()) {
      auto bytes = src.ReadRaw(t.name);
      if (!bytes.ok()) return bytes.status();
      s = (*writer)->WriteRaw(t.name, *bytes);
    } else {
      ReadOptions keep;  // the stored type: a lossless LibTorch round trip
      keep.floating_dtype = std::nullopt;
      auto tensor = src.Read(t.name, keep);
      if (!tensor.ok()) return tensor.status();
      s = (*writer)->Write(t.name, *tensor);
    }
    if (!s.ok()) return s;
  }
  return (*writer)->Commit();
}

// Special values per float type: NaN (with payload), infinities, -0,
// subnormals, extremes.
at::Tensor SpecialFloats(at::ScalarType type) {
  at::Tensor t = at::randn({7, 3}).to(type);
  auto flat = t.view({-1});
  const double inf = std::numeric_limits<double>::infinity();
  flat[0] = inf;
  flat[1] = -inf;
  flat[2] = -0.0;
  flat[3] = std::numeric_limits<double>::quiet_NaN();
  if (type == at::kBFloat16 || type == at::kHalf) {
    flat[4] = type == at::kHalf ? 5.96e-8 : 9.2e-41;  // subnormal
  } else {
    flat[4] = type == at::kFloat ? 1e-45 : 4.9e-324;
  }
  return t;
}

std::vector<RawTensor> EveryDType() {
  at::manual_seed(3);
  std::vector<RawTensor> all;
  for (at::ScalarType type :
       {at::kBFloat16, at::kHalf, at::kFloat, at::kDouble}) {
    all.push_back(ToRaw(absl::StrCat("float.", c10::toString(type)),
                        SpecialFloats(type)));
  }
  all.push_back(ToRaw("int.i64", at::randint(-1000, 1000, {5}, at::kLong)));
  all.push_back(ToRaw("int.i32", at::randint(-1000, 1000, {5}, at::kInt)));
  all.push_back(ToRaw("int.i16", at::randint(-1000, 1000, {5}, at::kShort)));
  all.push_back(ToRaw("int.i8", at::randint(-100, 100, {5}, at::kChar)));
  all.push_back(ToRaw("int.u8", at::randint(0, 255, {5}, at::kByte)));
  all.push_back(ToRaw("bool", at::rand({5}) > 0.5));
  all.push_back(ToRaw("scalar", at::scalar_tensor(3.5)));
  all.push_back(ToRaw("empty", at::zeros({0, 4}, at::kBFloat16)));
  // Types LibTorch 1.13 lacks travel as raw bytes.
  for (const char* dtype : {"U16", "U32", "U64", "F8_E4M3", "F8_E5M2"}) {
    RawTensor r{absl::StrCat("raw.", dtype), dtype, {3}, ""};
    size_t size = dtype[0] == 'F' ? 1
                                  : (dtype[1] == '1'   ? 2
                                     : dtype[1] == '3' ? 4
                                                       : 8);
    for (size_t i = 0; i < 3 * size; ++i)
      r.data.push_back(static_cast<char>(i * 37 + 1));
    all.push_back(r);
  }
  return all;
}

TEST(CheckpointWriterTest, RoundTripIsBitIdenticalForEveryDType) {
  TempDir dir;
  const std::string src_dir = dir.Join("src");
  ASSERT_EQ(::mkdir(src_dir.c_str(), 0755), 0);
  WriteShardedCheckpoint(src_dir, {EveryDType()});
  auto src = Checkpoint::Open(src_dir);
  ASSERT_TRUE(src.ok()) << src.status();
  ASSERT_EQ((*src)->tensors().size(), 17u);

  for (bool raw : {true, false}) {
    const std::string out = dir.Join(raw ? "out_raw" : "out_tensor");
    ASSERT_TRUE(CopyAll(**src, out, {}, raw).ok());
    auto back = Checkpoint::Open(out);
    ASSERT_TRUE(back.ok()) << back.status();
    ASSERT_EQ((*back)->tensors().size(), (*src)->tensors().size());
    for (const TensorInfo& t : (*src)->tensors()) {
      const TensorInfo* u = (*back)->Find(t.name);
      ASSERT_NE(u, nullptr) << t.name;
      EXPECT_EQ(u->dtype, t.dtype) << t.name;
      EXPECT_EQ(u->shape, t.shape) << t.name;
      EXPECT_EQ(*(*back)->ReadRaw(t.name), *(*src)->ReadRaw(t.name))
          << t.name << (raw ? " (raw)" : " (as a LibTorch tensor)");
    }
  }
}

TEST(CheckpointWriterTest, ShardsByByteBudgetLikeHuggingFace) {
  TempDir dir;
  std::vector<TensorInfo> layout;
  for (int i = 0; i < 10; ++i) {
    TensorInfo t;
    t.name = absl::StrCat("w", i);
    t.dtype = DType::kF32;
    t.shape = {25};
    t.numel = 25;
    t.nbytes = 100;
    layout.push_back(t);
  }
  layout[3].shape = {100};  // 400 bytes: bigger than the budget
  layout[3].numel = 100;
  layout[3].nbytes = 400;
  CheckpointWriterOptions options;
  options.max_shard_bytes = 250;
  const std::string out = dir.Join("out");
  auto writer = CheckpointWriter::Create(out, layout, options);
  ASSERT_TRUE(writer.ok()) << writer.status();
  for (const TensorInfo& t : layout) {
    ASSERT_TRUE((*writer)->Write(t.name, at::full(t.shape, 1.5)).ok());
  }
  ASSERT_TRUE((*writer)->Commit().ok());
  // w0 w1 | w2 | w3 (400, alone) | w4 w5 | w6 w7 | w8 w9
  auto ckpt = Checkpoint::Open(out);
  ASSERT_TRUE(ckpt.ok()) << ckpt.status();
  EXPECT_EQ((*ckpt)->files().size(), 6u);
  EXPECT_EQ((*ckpt)->Find("w0")->file, "model-00001-of-00006.safetensors");
  EXPECT_EQ((*ckpt)->Find("w1")->file, "model-00001-of-00006.safetensors");
  EXPECT_EQ((*ckpt)->Find("w2")->file, "model-00002-of-00006.safetensors");
  EXPECT_EQ((*ckpt)->Find("w3")->file, "model-00003-of-00006.safetensors");
  EXPECT_EQ((*ckpt)->Find("w9")->file, "model-00006-of-00006.safetensors");
  for (const auto& f : (*ckpt)->files()) {
    const uint64_t data = f->header().data_size;
    EXPECT_TRUE(data <= 250 || f->header().tensors.size() == 1) << f->path();
  }
  nlohmann::json index =
      nlohmann::json::parse(ReadFileOrDie(JoinPath(out, kIndexFileName)));
  EXPECT_EQ(index["metadata"]["total_size"].get<uint64_t>(), 1300u);
  EXPECT_EQ(index["weight_map"].size(), 10u);
  EXPECT_TRUE(ckpt.value()->warnings().empty());
}

TEST(CheckpointWriterTest, OneShardIsModelSafetensorsWithoutIndex) {
  TempDir dir;
  WriteFileOrDie(dir.Join("model.safetensors"),
                 SerializeSafetensors({ToRaw("a", at::ones({2}))}));
  auto src = Checkpoint::Open(dir.path());
  ASSERT_TRUE(src.ok());
  const std::string out = dir.Join("out");
  ASSERT_TRUE(CopyAll(**src, out, {}, true).ok());
  EXPECT_TRUE(IsRegularFile(JoinPath(out, "model.safetensors")));
  EXPECT_FALSE(PathExists(JoinPath(out, kIndexFileName)));
  // Same bytes as the independent test serializer (same order, same padding
  // and metadata rule), except for the metadata the writer adds.
  auto back = Checkpoint::Open(out);
  ASSERT_TRUE(back.ok());
  EXPECT_EQ((*back)->files()[0]->header().metadata.at("format"), "pt");
}

TEST(CheckpointWriterTest, PreservesTheReferenceFileAssignment) {
  TempDir dir;
  const std::string src_dir = dir.Join("src");
  ASSERT_EQ(::mkdir(src_dir.c_str(), 0755), 0);
  std::vector<RawTensor> a = {ToRaw("x", at::ones({3})),
                              ToRaw("y", at::ones({2, 2}))};
  std::vector<RawTensor> b = {ToRaw("z", at::zeros({4}))};
  WriteShardedCheckpoint(src_dir, {a, b});
  auto src = Checkpoint::Open(src_dir);
  ASSERT_TRUE(src.ok());
  CheckpointWriterOptions options;
  options.preserve_file_assignment = true;
  const std::string out = dir.Join("out");
  ASSERT_TRUE(CopyAll(**src, out, options, false).ok());
  auto back = Checkpoint::Open(out);
  ASSERT_TRUE(back.ok()) << back.status();
  for (const TensorInfo& t : (*src)->tensors()) {
    EXPECT_EQ((*back)->Find(t.name)->file, t.file);
  }
}

TEST(CheckpointWriterTest, OutputIsDeterministicAndAligned) {
  TempDir dir;
  const std::string src_dir = dir.Join("src");
  ASSERT_EQ(::mkdir(src_dir.c_str(), 0755), 0);
  WriteShardedCheckpoint(src_dir, {EveryDType()});
  auto src = Checkpoint::Open(src_dir);
  ASSERT_TRUE(src.ok());
  CheckpointWriterOptions options;
  options.max_shard_bytes = 64;
  ASSERT_TRUE(CopyAll(**src, dir.Join("a"), options, false).ok());
  ASSERT_TRUE(CopyAll(**src, dir.Join("b"), options, true).ok());
  auto names = ListDirectory(dir.Join("a"));
  ASSERT_TRUE(names.ok());
  EXPECT_GT(names->size(), 2u);
  EXPECT_EQ(*names, *ListDirectory(dir.Join("b")));
  for (const std::string& n : *names) {
    EXPECT_EQ(ReadFileOrDie(JoinPath(dir.Join("a"), n)),
              ReadFileOrDie(JoinPath(dir.Join("b"), n)))
        << n;
  }
  auto back = Checkpoint::Open(dir.Join("a"));
  ASSERT_TRUE(back.ok());
  for (const auto& f : (*back)->files()) {
    EXPECT_EQ(f->header().data_offset() % 8, 0u) << f->path();
    for (const TensorEntry& e : f->header().tensors) {
      EXPECT_EQ(e.begin % DTypeSize(e.dtype), 0u) << e.name;
    }
  }
}

TEST(CheckpointWriterTest, CopiesNonTensorFilesOnly) {
  TempDir dir;
  WriteFileOrDie(dir.Join("model.safetensors"),
                 SerializeSafetensors({ToRaw("a", at::ones({2}))}));
  for (const char* f : {"config.json", "tokenizer.json", "tokenizer.model",
                        "generation_config.json", "special_tokens_map.json"}) {
    WriteFileOrDie(dir.Join(f), absl::StrCat("content of ", f));
  }
  for (const char* f : {"pytorch_model.bin", "pytorch_model.bin.index.json",
                        "other.safetensors", ".gitattributes", "tf_model.h5",
                        "flax_model.msgpack"}) {
    WriteFileOrDie(dir.Join(f), "weights");
  }
  ASSERT_EQ(::mkdir(dir.Join("subdir").c_str(), 0755), 0);
  auto src = Checkpoint::Open(dir.Join("model.safetensors"));
  ASSERT_TRUE(src.ok());
  CheckpointWriterOptions options;
  options.copy_files_from = dir.path();
  const std::string out = dir.Join("out");
  ASSERT_TRUE(CopyAll(**src, out, options, true).ok());
  auto names = ListDirectory(out);
  ASSERT_TRUE(names.ok());
  EXPECT_EQ(*names, (std::vector<std::string>{
                        "config.json", "generation_config.json",
                        "model.safetensors", "special_tokens_map.json",
                        "tokenizer.json", "tokenizer.model"}));
  EXPECT_EQ(ReadFileOrDie(JoinPath(out, "config.json")),
            "content of config.json");
}

TEST(CheckpointWriterTest, NothingIsPublishedUnlessCommitted) {
  TempDir dir;
  std::vector<TensorInfo> layout(2);
  layout[0] = {"a", DType::kF32, {2}, 2, 8, ""};
  layout[1] = {"b", DType::kF32, {2}, 2, 8, ""};
  const std::string out = dir.Join("out");
  {
    auto writer = CheckpointWriter::Create(out, layout, {});
    ASSERT_TRUE(writer.ok());
    ASSERT_TRUE((*writer)->Write("a", at::ones({2})).ok());
    absl::Status s = (*writer)->Commit();  // "b" missing
    EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition);
    EXPECT_TRUE(absl::StrContains(s.message(), "'b'"));
  }
  EXPECT_FALSE(PathExists(out));
  EXPECT_EQ(ListDirectory(dir.path())->size(), 0u) << "staging left behind";
}

TEST(CheckpointWriterTest, CrashBeforeCommitLeavesNoOutput) {
  TempDir dir;
  std::vector<TensorInfo> layout(2);
  layout[0] = {"a", DType::kF32, {2}, 2, 8, ""};
  layout[1] = {"b", DType::kF32, {2}, 2, 8, ""};
  const std::string out = dir.Join("out");
  pid_t pid = ::fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    // The child dies mid-write without unwinding (no destructors run).
    auto writer = CheckpointWriter::Create(out, layout, {});
    if (!writer.ok()) ::_exit(1);
    if (!(*writer)->WriteRaw("a", std::string(8, '\1')).ok()) ::_exit(1);
    ::_exit(0);
  }
  int status = 0;
  ASSERT_EQ(::waitpid(pid, &status, 0), pid);
  ASSERT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0);
  EXPECT_FALSE(PathExists(out));
  // Only the hidden staging directory remains; no reader would take it for
  // the output.
  auto names = ListDirectory(dir.path());
  ASSERT_EQ(names->size(), 1u);
  EXPECT_TRUE(absl::StartsWith((*names)[0], ".out.tailor-stage-"));
  // Issue #10 point 17: the dead writer's staging is recognised as stale
  // (no live writer holds its lock) and removed; nothing else is touched.
  WriteFileOrDie(dir.Join(".out.partial-1-0.txt"), "not ours");
  WriteFileOrDie(dir.Join(".other.tailor-stage-1-0"), "another output's");
  ASSERT_EQ(::mkdir(dir.Join(".out.partial-1-7").c_str(), 0755), 0);  // legacy
  auto live = CheckpointWriter::Create(dir.Join("out"), layout, {});
  ASSERT_TRUE(live.ok()) << live.status();
  EXPECT_EQ(RemoveStaleStaging(dir.path(), {"out"}), 2);
  names = ListDirectory(dir.path());
  ASSERT_EQ(names->size(), 3u) << names->size();
  EXPECT_TRUE(PathExists((*live)->staged()->staging_path()));
  EXPECT_TRUE(PathExists(dir.Join(".out.partial-1-0.txt")));
  EXPECT_TRUE(PathExists(dir.Join(".other.tailor-stage-1-0")));
}

// Issue #10 point 5: the output's parent swapped for a symlink to a directory
// outside while the checkpoint is written: nothing lands there.
TEST(CheckpointWriterTest, ParentSwappedForSymlinkIsRefused) {
  TempDir dir;
  std::vector<TensorInfo> layout = {{"a", DType::kF32, {2}, 2, 8, ""}};
  ASSERT_EQ(::mkdir(dir.Join("root").c_str(), 0755), 0);
  ASSERT_EQ(::mkdir(dir.Join("root/sub").c_str(), 0755), 0);
  ASSERT_EQ(::mkdir(dir.Join("outside").c_str(), 0755), 0);
  auto writer = CheckpointWriter::Create(dir.Join("root/sub/out"), layout, {});
  ASSERT_TRUE(writer.ok()) << writer.status();
  ASSERT_TRUE((*writer)->WriteRaw("a", std::string(8, '\1')).ok());
  ASSERT_EQ(::rename(dir.Join("root/sub").c_str(), dir.Join("moved").c_str()),
            0);
  ASSERT_EQ(
      ::symlink(dir.Join("outside").c_str(), dir.Join("root/sub").c_str()), 0);
  absl::Status s = (*writer)->Commit();
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition) << s;
  EXPECT_TRUE(absl::StrContains(s.message(), "replaced")) << s;
  EXPECT_TRUE(ListDirectory(dir.Join("outside"))->empty());
  writer->reset();
  EXPECT_TRUE(ListDirectory(dir.Join("moved"))->empty()) << "staging left";
}

// Issue #10 point 3: outputs published as one unit; a failing second rename
// rolls back the first, restoring what it replaced.
TEST(CheckpointWriterTest, PublishAllRollsBack) {
  TempDir dir;
  std::vector<TensorInfo> layout = {{"a", DType::kF32, {2}, 2, 8, ""}};
  const std::string out = dir.Join("out");
  ASSERT_EQ(::mkdir(out.c_str(), 0755), 0);
  WriteFileOrDie(JoinPath(out, "old.txt"), "old");
  CheckpointWriterOptions options;
  options.overwrite = true;
  auto writer = CheckpointWriter::Create(out, layout, options);
  ASSERT_TRUE(writer.ok()) << writer.status();
  ASSERT_TRUE((*writer)->WriteRaw("a", std::string(8, '\1')).ok());
  ASSERT_TRUE((*writer)->Stage().ok());
  auto report = StagedOutput::Create(dir.Join("report.json"),
                                     StagedOutput::Kind::kFile, false);
  ASSERT_TRUE(report.ok()) << report.status();
  // The report's name is taken after staging: its publish fails.
  WriteFileOrDie(dir.Join("report.json"), "squatter");
  StagedOutput* outputs[] = {(*writer)->staged(), report->get()};
  // CheckPublishable catches it before any rename...
  EXPECT_EQ(PublishAll(outputs).code(), absl::StatusCode::kAlreadyExists);
  EXPECT_EQ(ReadFileOrDie(JoinPath(out, "old.txt")), "old");
  // ...and a failure at the rename itself rolls the first output back.
  ASSERT_TRUE((*writer)->staged()->Publish().ok());
  EXPECT_FALSE(PathExists(JoinPath(out, "old.txt")));
  ASSERT_TRUE((*writer)->staged()->Rollback().ok());
  EXPECT_EQ(ReadFileOrDie(JoinPath(out, "old.txt")), "old");
  EXPECT_FALSE(PathExists(JoinPath(out, "model.safetensors")));
  writer->reset();
  report->reset();
  EXPECT_EQ(*ListDirectory(dir.path()),
            std::vector<std::string>({"out", "report.json"}));
}

TEST(CheckpointWriterTest, ExistingOutputNeedsOverwrite) {
  TempDir dir;
  std::vector<TensorInfo> layout = {{"a", DType::kF32, {2}, 2, 8, ""}};
  const std::string out = dir.Join("out");
  ASSERT_EQ(::mkdir(out.c_str(), 0755), 0);
  WriteFileOrDie(JoinPath(out, "stale.txt"), "old");
  auto refused = CheckpointWriter::Create(out, layout, {});
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kAlreadyExists);

  CheckpointWriterOptions options;
  options.overwrite = true;
  auto writer = CheckpointWriter::Create(out, layout, options);
  ASSERT_TRUE(writer.ok()) << writer.status();
  ASSERT_TRUE((*writer)->Write("a", at::ones({2})).ok());
  ASSERT_TRUE((*writer)->Commit().ok());
  EXPECT_FALSE(PathExists(JoinPath(out, "stale.txt")));
  EXPECT_TRUE(IsRegularFile(JoinPath(out, "model.safetensors")));
  EXPECT_EQ(ListDirectory(dir.path())->size(), 1u);
}

TEST(CheckpointWriterTest, RejectsBadWrites) {
  TempDir dir;
  std::vector<TensorInfo> layout = {{"a", DType::kBF16, {2, 3}, 6, 12, ""}};
  auto writer = CheckpointWriter::Create(dir.Join("out"), layout, {});
  ASSERT_TRUE(writer.ok());
  absl::Status shape = (*writer)->Write("a", at::ones({3, 2}));
  EXPECT_EQ(shape.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(absl::StrContains(shape.message(), "shape")) << shape;
  EXPECT_EQ((*writer)->Write("zzz", at::ones({1})).code(),
            absl::StatusCode::kNotFound);
  EXPECT_EQ((*writer)->WriteRaw("a", "short").code(),
            absl::StatusCode::kInvalidArgument);
  ASSERT_TRUE((*writer)->Write("a", at::ones({2, 3})).ok());
  EXPECT_EQ((*writer)->Write("a", at::ones({2, 3})).code(),
            absl::StatusCode::kFailedPrecondition);
}

// A tensor streamed in pieces (BeginTensor/WriteChunk/EndTensor) lands
// byte for byte where WriteRaw would put it; a stream cannot overrun its
// tensor, end short, write a tensor twice or leave a partial tensor that
// Commit() would publish.
TEST(CheckpointWriterTest, StreamedTensorsMatchWriteRawAndAreChecked) {
  TempDir dir;
  std::vector<TensorInfo> layout = {{"a", DType::kU8, {10}, 10, 10, ""},
                                    {"b", DType::kU8, {4}, 4, 4, ""}};
  const std::string a = "0123456789", b = "wxyz";
  {
    auto whole = CheckpointWriter::Create(dir.Join("whole"), layout, {});
    ASSERT_TRUE(whole.ok());
    ASSERT_TRUE((*whole)->WriteRaw("a", a).ok());
    ASSERT_TRUE((*whole)->WriteRaw("b", b).ok());
    ASSERT_TRUE((*whole)->Commit().ok());
  }
  auto writer = CheckpointWriter::Create(dir.Join("streamed"), layout, {});
  ASSERT_TRUE(writer.ok());
  auto sa = (*writer)->BeginTensor("a");
  ASSERT_TRUE(sa.ok()) << sa.status();
  EXPECT_EQ((*writer)->BeginTensor("a").status().code(),
            absl::StatusCode::kFailedPrecondition);  // written twice
  EXPECT_EQ((*writer)->BeginTensor("zzz").status().code(),
            absl::StatusCode::kNotFound);
  for (size_t off = 0; off < a.size(); off += 3) {
    ASSERT_TRUE((*writer)->WriteChunk(&*sa, a.substr(off, 3)).ok());
  }
  ASSERT_TRUE((*writer)->EndTensor(&*sa).ok());
  auto sb = (*writer)->BeginTensor("b");
  ASSERT_TRUE(sb.ok());
  ASSERT_TRUE((*writer)->WriteChunk(&*sb, "wx").ok());
  ASSERT_TRUE((*writer)->WriteChunk(&*sb, "yz").ok());
  ASSERT_TRUE((*writer)->EndTensor(&*sb).ok());
  ASSERT_TRUE((*writer)->Commit().ok());
  EXPECT_EQ(ReadFileOrDie(dir.Join("whole/model.safetensors")),
            ReadFileOrDie(dir.Join("streamed/model.safetensors")));
  // And read back in pieces (Checkpoint::ReadRawRange).
  auto ckpt = Checkpoint::Open(dir.Join("streamed"));
  ASSERT_TRUE(ckpt.ok()) << ckpt.status();
  char piece[4] = {};
  ASSERT_TRUE((*ckpt)->ReadRawRange("a", 6, 4, piece).ok());
  EXPECT_EQ(std::string(piece, 4), "6789");
  EXPECT_EQ((*ckpt)->ReadRawRange("a", 7, 4, piece).code(),
            absl::StatusCode::kInvalidArgument);  // leaves the tensor
  EXPECT_EQ((*ckpt)->ReadRawRange("zzz", 0, 1, piece).code(),
            absl::StatusCode::kNotFound);

  // A stream left partial: Commit() refuses and publishes nothing.
  {
    auto w = CheckpointWriter::Create(dir.Join("partial"), layout, {});
    ASSERT_TRUE(w.ok());
    ASSERT_TRUE((*w)->WriteRaw("a", a).ok());
    auto s = (*w)->BeginTensor("b");
    ASSERT_TRUE(s.ok());
    ASSERT_TRUE((*w)->WriteChunk(&*s, "wx").ok());
    absl::Status commit = (*w)->Commit();
    EXPECT_EQ(commit.code(), absl::StatusCode::kFailedPrecondition);
    EXPECT_TRUE(absl::StrContains(commit.message(), "partly written"))
        << commit;
  }
  EXPECT_FALSE(PathExists(dir.Join("partial")));
  // Overrunning or ending short fails the stream and the writer.
  for (bool overrun : {true, false}) {
    const std::string out = dir.Join(overrun ? "overrun" : "short");
    auto w = CheckpointWriter::Create(out, layout, {});
    ASSERT_TRUE(w.ok());
    ASSERT_TRUE((*w)->WriteRaw("a", a).ok());
    auto s = (*w)->BeginTensor("b");
    ASSERT_TRUE(s.ok());
    if (overrun) {
      EXPECT_EQ((*w)->WriteChunk(&*s, "vwxyz").code(),
                absl::StatusCode::kInvalidArgument);
    } else {
      ASSERT_TRUE((*w)->WriteChunk(&*s, "wxy").ok());
      EXPECT_EQ((*w)->EndTensor(&*s).code(),
                absl::StatusCode::kInvalidArgument);
    }
    EXPECT_EQ((*w)->Commit().code(), absl::StatusCode::kFailedPrecondition);
    EXPECT_FALSE(PathExists(out));
  }
}

TEST(CheckpointWriterTest, NarrowingRoundsLikeLibTorch) {
  TempDir dir;
  std::vector<TensorInfo> layout = {
      {"a", DType::kBF16, {1000}, 1000, 2000, ""}};
  const std::string out = dir.Join("out");
  auto writer = CheckpointWriter::Create(out, layout, {});
  ASSERT_TRUE(writer.ok());
  at::Tensor x = at::randn({1000}, at::kDouble);
  ASSERT_TRUE((*writer)->Write("a", x).ok());
  ASSERT_TRUE((*writer)->Commit().ok());
  ReadOptions keep;
  keep.floating_dtype = std::nullopt;
  auto back = (*Checkpoint::Open(out))->Read("a", keep);
  ASSERT_TRUE(back.ok());
  EXPECT_TRUE(BitEqual(*back, x.to(at::kBFloat16)));
}

// Issue #14 point 7: with copy_resolver (a job's), the base's non-tensor
// files are opened beneath their root: one symlinked out of the roots is
// refused at Create() (before any tensor is written), and one swapped for
// such a symlink after Create() is refused when copied, nothing published
// and nothing of it copied. Links inside the root are followed.
TEST(CheckpointWriterTest, CopiedFilesStayBeneathTheRoots) {
  TempDir dir;
  const std::string root = dir.Join("root"), outside = dir.Join("outside");
  ASSERT_TRUE(MakeDirectories(root + "/base").ok());
  ASSERT_TRUE(MakeDirectories(outside).ok());
  WriteFileOrDie(outside + "/secret", "outside the root");
  WriteFileOrDie(root + "/shared-config.json", "in the root");
  ASSERT_EQ(
      ::symlink("../shared-config.json", (root + "/base/config.json").c_str()),
      0);
  ASSERT_EQ(::symlink((outside + "/secret").c_str(),
                      (root + "/base/tokenizer.json").c_str()),
            0);
  absl::StatusOr<UriResolver> resolver = UriResolver::Create({root});
  ASSERT_TRUE(resolver.ok());
  std::vector<TensorInfo> layout(1);
  layout[0] = {"a", DType::kF32, {2}, 2, 8, ""};
  CheckpointWriterOptions options;
  options.copy_files_from = root + "/base";
  options.copy_resolver = &*resolver;
  auto writer = CheckpointWriter::Create(root + "/out", layout, options);
  ASSERT_FALSE(writer.ok());
  EXPECT_EQ(writer.status().code(), absl::StatusCode::kPermissionDenied)
      << writer.status();
  EXPECT_TRUE(absl::StrContains(writer.status().message(), "tokenizer.json"))
      << writer.status();

  // The link replaced by a regular file: the copy is allowed, and the
  // in-root config.json link followed...
  ASSERT_EQ(::unlink((root + "/base/tokenizer.json").c_str()), 0);
  WriteFileOrDie(root + "/base/tokenizer.json", "tokenizer");
  writer = CheckpointWriter::Create(root + "/out", layout, options);
  ASSERT_TRUE(writer.ok()) << writer.status();
  ASSERT_TRUE((*writer)->Write("a", at::ones({2})).ok());
  // ...until it is swapped back for the escaping link while the job runs.
  ASSERT_EQ(::unlink((root + "/base/tokenizer.json").c_str()), 0);
  ASSERT_EQ(::symlink((outside + "/secret").c_str(),
                      (root + "/base/tokenizer.json").c_str()),
            0);
  absl::Status s = (*writer)->Commit();
  EXPECT_EQ(s.code(), absl::StatusCode::kPermissionDenied) << s;
  EXPECT_TRUE(absl::StrContains(s.message(), "tokenizer.json")) << s;
  writer->reset();
  EXPECT_FALSE(PathExists(root + "/out"));

  // A regular file again: published, with the in-root link's contents.
  ASSERT_EQ(::unlink((root + "/base/tokenizer.json").c_str()), 0);
  WriteFileOrDie(root + "/base/tokenizer.json", "tokenizer");
  writer = CheckpointWriter::Create(root + "/out", layout, options);
  ASSERT_TRUE(writer.ok()) << writer.status();
  ASSERT_TRUE((*writer)->Write("a", at::ones({2})).ok());
  ASSERT_TRUE((*writer)->Commit().ok());
  EXPECT_EQ(ReadFileOrDie(root + "/out/config.json"), "in the root");
  EXPECT_EQ(ReadFileOrDie(root + "/out/tokenizer.json"), "tokenizer");
}

}  // namespace
}  // namespace tailor
