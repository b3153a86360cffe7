// Issue #11 point 4: a streamed tensor's stored bytes reach the journal
// chunk by chunk (JournalFusedSpool) as a sidecar file, never whole in
// memory; a resumed job copies them back in pieces.

#include <gtest/gtest.h>
#include <unistd.h>

#include <string>

#include "absl/strings/match.h"
#include "fusion/journal.h"
#include "testing/test_util.h"
#include "util/file_util.h"

namespace tailor {
namespace {

using ::tailor::testing::ReadFileOrDie;
using ::tailor::testing::TempDir;
using ::tailor::testing::WriteFileOrDie;

// Hidden files (temp spools) in `dir`.
int HiddenFiles(const std::string& dir) {
  int n = 0;
  auto names = ListDirectory(dir);
  if (!names.ok()) return -1;
  for (const std::string& name : *names) {
    n += absl::StartsWith(name, ".");
  }
  return n;
}

std::string Bytes(size_t n) {
  std::string s(n, '\0');
  for (size_t i = 0; i < n; ++i) s[i] = static_cast<char>((i * 131) % 251);
  return s;
}

TEST(JournalSpool, SpooledBytesRoundTripThroughTheSidecar) {
  TempDir tmp;
  const std::string dir = tmp.Join("j");
  auto opened = FusionJournal::Open(dir, {{"spec", "x"}});
  ASSERT_TRUE(opened.ok()) << opened.status();
  FusionJournal& journal = *opened->journal;
  // 2.5 MiB in chunks that straddle the 1 MiB copy pieces.
  const std::string bytes = Bytes((5u << 20) / 2);
  auto spool = journal.BeginFused(7, bytes.size());
  ASSERT_TRUE(spool.ok()) << spool.status();
  for (size_t off = 0; off < bytes.size(); off += 300001) {
    ASSERT_TRUE(
        (*spool)->Append(absl::string_view(bytes).substr(off, 300001)).ok());
  }
  EXPECT_EQ(HiddenFiles(dir), 1);  // the spool, until Write()
  JournalEntry e;
  e.index = 7;
  e.name = "w";
  e.fused_spool = std::move(*spool);
  e.report = {{"kept", 3}};
  ASSERT_TRUE(journal.Write(e).ok());
  EXPECT_EQ(HiddenFiles(dir), 0);
  ASSERT_TRUE(IsRegularFile(journal.FusedPath(7)));
  // The entry file itself does not hold the bytes.
  EXPECT_LT(ReadFileOrDie(journal.EntryPath(7)).size(), 4096u);

  auto back = journal.Read(7);
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_FALSE(back->fused.has_value());
  EXPECT_EQ(back->FusedBytes(), bytes.size());
  std::string copied;
  size_t pieces = 0;
  ASSERT_TRUE(journal
                  .CopyFused(*back,
                             [&](absl::string_view piece) {
                               EXPECT_LE(piece.size(), 1u << 20);
                               copied.append(piece.data(), piece.size());
                               ++pieces;
                               return absl::OkStatus();
                             })
                  .ok());
  EXPECT_EQ(copied, bytes);
  EXPECT_EQ(pieces, 3u);
  EXPECT_EQ(back->report, e.report);

  // A damaged or missing sidecar makes the entry unusable.
  std::string damaged = ReadFileOrDie(journal.FusedPath(7));
  damaged[12345] ^= 0x10;
  WriteFileOrDie(journal.FusedPath(7), damaged);
  EXPECT_EQ(journal.Read(7).status().code(), absl::StatusCode::kDataLoss);
  WriteFileOrDie(journal.FusedPath(7), damaged.substr(0, 100));
  EXPECT_EQ(journal.Read(7).status().code(), absl::StatusCode::kDataLoss);
  ASSERT_EQ(::unlink(journal.FusedPath(7).c_str()), 0);
  EXPECT_FALSE(journal.Read(7).ok());
}

TEST(JournalSpool, UnwrittenSpoolsLeaveNothing) {
  TempDir tmp;
  const std::string dir = tmp.Join("j");
  auto opened = FusionJournal::Open(dir, {{"spec", "x"}});
  ASSERT_TRUE(opened.ok()) << opened.status();
  {
    auto spool = opened->journal->BeginFused(2, 10);
    ASSERT_TRUE(spool.ok());
    ASSERT_TRUE((*spool)->Append("0123456789").ok());
    EXPECT_EQ(HiddenFiles(dir), 1);
  }  // an error midway: the tensor is not journalled
  EXPECT_EQ(HiddenFiles(dir), 0);
  EXPECT_FALSE(opened->journal->Has(2));
  // A spool left by a killed process goes when the journal is opened again.
  WriteFileOrDie(JoinPath(dir, ".00000003.fused.tmp-99999"), "partial");
  auto again = FusionJournal::Open(dir, {{"spec", "x"}});
  ASSERT_TRUE(again.ok());
  EXPECT_EQ(HiddenFiles(dir), 0);
}

TEST(JournalSpool, LimitsRefuseSpoolsAndWriteNothing) {
  TempDir tmp;
  const std::string dir = tmp.Join("j");
  auto opened = FusionJournal::Open(dir, {{"spec", "x"}}, JournalLimits{1000});
  ASSERT_TRUE(opened.ok()) << opened.status();
  auto refused = opened->journal->BeginFused(0, 2000);
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(HiddenFiles(dir), 0);
  // Within the budget for the spool but not with the entry file.
  auto spool = opened->journal->BeginFused(0, 900);
  ASSERT_TRUE(spool.ok()) << spool.status();
  ASSERT_TRUE((*spool)->Append(std::string(900, 'x')).ok());
  JournalEntry e;
  e.index = 0;
  e.name = "w";
  e.fused_spool = std::move(*spool);
  EXPECT_EQ(opened->journal->Write(e).code(),
            absl::StatusCode::kResourceExhausted);
  e.fused_spool.reset();
  EXPECT_FALSE(opened->journal->Has(0));
  EXPECT_FALSE(PathExists(opened->journal->FusedPath(0)));
  EXPECT_EQ(HiddenFiles(dir), 0);
}

}  // namespace
}  // namespace tailor
