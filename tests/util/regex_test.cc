// RE2-backed Regex (bounded compile, linear match) and Quote (bounded echo).

#include "util/regex.h"

#include <gtest/gtest.h>

#include <chrono>
#include <string>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "util/quote.h"

namespace tailor {
namespace {

std::string Nested(int depth) {
  return absl::StrCat(std::string(depth, '('), "a", std::string(depth, ')'));
}

TEST(RegexTest, SearchAndFullMatchHaveReSemantics) {
  auto re = Regex::Compile("mlp\\.(up|down)_proj", "include[0]");
  ASSERT_TRUE(re.ok()) << re.status();
  EXPECT_TRUE(re->Search("model.layers.0.mlp.up_proj.weight"));
  EXPECT_FALSE(re->Search("model.layers.0.mlp.gate_proj.weight"));
  EXPECT_FALSE(re->FullMatch("model.layers.0.mlp.up_proj.weight"));
  EXPECT_TRUE(re->FullMatch("mlp.down_proj"));
  EXPECT_FALSE(Regex().Search("anything"));
}

// Issue #10 point 6: 20,000 nested groups crashed std::regex (stack
// overflow). Refused by length, bounded message, no crash.
TEST(RegexTest, DeeplyNestedPatternIsRefusedNotACrash) {
  const std::string pattern = Nested(20000);
  auto re = Regex::Compile(pattern, "include[0]");
  ASSERT_EQ(re.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(absl::StartsWith(re.status().message(), "include[0]: "))
      << re.status();
  EXPECT_TRUE(absl::StrContains(re.status().message(), "1000 bytes"));
  EXPECT_LT(re.status().message().size(), 600u);
  // Within the length limit, nesting is RE2's business: compiled or refused,
  // never a crash.
  auto shallow = Regex::Compile(Nested(450), "include[1]");
  if (shallow.ok()) {
    EXPECT_TRUE(shallow->Search("a"));
  } else {
    EXPECT_EQ(shallow.status().code(), absl::StatusCode::kInvalidArgument);
  }
}

TEST(RegexTest, UnsupportedSyntaxNamesTheFieldAndRe2sReason) {
  for (const char* p : {"(a)\\1", "foo(?=bar)", "(?<!x)y", "("}) {
    auto re = Regex::Compile(p, "exclude[3]");
    ASSERT_EQ(re.status().code(), absl::StatusCode::kInvalidArgument) << p;
    EXPECT_TRUE(absl::StartsWith(re.status().message(), "exclude[3]: '"))
        << re.status();
    EXPECT_TRUE(absl::StrContains(re.status().message(), "RE2")) << p;
  }
}

TEST(RegexTest, HugeRepetitionIsBoundedByMaxMem) {
  // Compiles to an enormous program under std::regex-like engines; RE2
  // refuses it within kMaxRegexMemory.
  auto re = Regex::Compile("((a{100}){100}){100}", "include[0]");
  EXPECT_EQ(re.status().code(), absl::StatusCode::kInvalidArgument);
}

// Issue #10 points 7 and 8: patterns that backtrack exponentially (and
// recursed per character) in std::regex match in linear time.
TEST(RegexTest, PathologicalPatternsMatchInLinearTime) {
  const auto start = std::chrono::steady_clock::now();
  auto ab = Regex::Compile("^(a|b)*$", "include[0]");
  ASSERT_TRUE(ab.ok());
  std::string long_name(60000, 'a');
  for (size_t i = 0; i < long_name.size(); i += 3) long_name[i] = 'b';
  EXPECT_TRUE(ab->Search(long_name));
  EXPECT_FALSE(ab->Search(long_name + "."));
  auto dot = Regex::Compile("^(.|.)*X$", "include[0]");
  ASSERT_TRUE(dot.ok());
  for (int i = 0; i < 100; ++i) {
    EXPECT_FALSE(dot->Search(
        absl::StrCat("model.layers.", i, ".self_attn.q_proj.weight")));
  }
  EXPECT_FALSE(dot->Search(long_name));
  EXPECT_TRUE(dot->Search(long_name + "X"));
  // Generous: linear matching takes milliseconds; backtracking would not
  // finish at all.
  EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::seconds(30));
}

TEST(QuoteTest, BoundsLongValues) {
  EXPECT_EQ(Quote("abc"), "'abc'");
  const std::string uri(60000, 'x');
  const std::string q = Quote(uri);
  EXPECT_EQ(q, absl::StrCat("'", std::string(200, 'x'), "'... (60000 bytes)"));
  EXPECT_EQ(Quote("abcdef", 3), "'abc'... (6 bytes)");
}

TEST(QuoteTest, EscapesControlBytesAndInvalidUtf8NeverSplitsCharacters) {
  EXPECT_EQ(Quote("a\nb\xff"), "'a\\x0ab\\xff'");
  // "é" is 2 bytes: a 3-byte budget keeps "a" and "é", not half of the next.
  EXPECT_EQ(Quote("a\xc3\xa9\xc3\xa9", 4), "'a\xc3\xa9'... (5 bytes)");
}

}  // namespace
}  // namespace tailor
