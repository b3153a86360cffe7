#include "util/json_util.h"

#include <gtest/gtest.h>

#include <string>

#include "absl/status/status.h"
#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"

namespace tailor {
namespace {

constexpr size_t kValid = absl::string_view::npos;

TEST(FindInvalidUtf8Test, AsciiAndEmptyAreValid) {
  EXPECT_EQ(FindInvalidUtf8(""), kValid);
  EXPECT_EQ(FindInvalidUtf8("{\"a\": [1, 2]}"), kValid);
  EXPECT_EQ(FindInvalidUtf8(absl::string_view("a\0b", 3)), kValid);
  EXPECT_EQ(FindInvalidUtf8("\x7f"), kValid);
}

TEST(FindInvalidUtf8Test, ValidMultibyteAtEveryBoundary) {
  for (const char* s : {
           "\xC2\x80",          // U+0080, smallest 2-byte
           "\xC3\xA9",          // U+00E9 e-acute
           "\xDF\xBF",          // U+07FF, largest 2-byte
           "\xE0\xA0\x80",      // U+0800, smallest 3-byte
           "\xE2\x82\xAC",      // U+20AC euro sign
           "\xED\x9F\xBF",      // U+D7FF, just below the surrogates
           "\xEE\x80\x80",      // U+E000, just above the surrogates
           "\xEF\xBF\xBF",      // U+FFFF
           "\xF0\x90\x80\x80",  // U+10000, smallest 4-byte
           "\xF0\x9F\x98\x80",  // U+1F600 emoji
           "\xF4\x8F\xBF\xBF",  // U+10FFFF, the largest code point
       }) {
    EXPECT_EQ(FindInvalidUtf8(s), kValid) << absl::CHexEscape(s);
    EXPECT_EQ(FindInvalidUtf8(std::string("ab") + s + "cd"), kValid)
        << absl::CHexEscape(s);
  }
  EXPECT_EQ(FindInvalidUtf8("caf\xC3\xA9 \xE2\x82\xAC \xF0\x9F\x98\x80"),
            kValid);
}

TEST(FindInvalidUtf8Test, OverlongFormsAreInvalid) {
  EXPECT_EQ(FindInvalidUtf8("\xC0\x80"), 0u);          // NUL in 2 bytes
  EXPECT_EQ(FindInvalidUtf8("\xC0\xAF"), 0u);          // '/' in 2 bytes
  EXPECT_EQ(FindInvalidUtf8("\xC1\xBF"), 0u);          // U+007F in 2 bytes
  EXPECT_EQ(FindInvalidUtf8("\xE0\x80\xAF"), 0u);      // '/' in 3 bytes
  EXPECT_EQ(FindInvalidUtf8("\xE0\x9F\xBF"), 0u);      // U+07FF in 3 bytes
  EXPECT_EQ(FindInvalidUtf8("\xF0\x80\x80\xAF"), 0u);  // '/' in 4 bytes
  EXPECT_EQ(FindInvalidUtf8("\xF0\x8F\xBF\xBF"), 0u);  // U+FFFF in 4 bytes
  EXPECT_EQ(FindInvalidUtf8("abc\xC0\xAF"), 3u);
}

TEST(FindInvalidUtf8Test, SurrogatesAreInvalid) {
  EXPECT_EQ(FindInvalidUtf8("\xED\xA0\x80"), 0u);  // U+D800
  EXPECT_EQ(FindInvalidUtf8("\xED\xAF\xBF"), 0u);  // U+DBFF
  EXPECT_EQ(FindInvalidUtf8("\xED\xB0\x80"), 0u);  // U+DC00
  EXPECT_EQ(FindInvalidUtf8("\xED\xBF\xBF"), 0u);  // U+DFFF
  // A CESU-8 style encoded pair is two surrogates, still invalid.
  EXPECT_EQ(FindInvalidUtf8("x\xED\xA0\xBD\xED\xB8\x80"), 1u);
}

TEST(FindInvalidUtf8Test, AboveMaxCodePointIsInvalid) {
  EXPECT_EQ(FindInvalidUtf8("\xF4\x90\x80\x80"), 0u);  // U+110000
  EXPECT_EQ(FindInvalidUtf8("\xF5\x80\x80\x80"), 0u);
  EXPECT_EQ(FindInvalidUtf8("\xF7\xBF\xBF\xBF"), 0u);      // U+1FFFFF
  EXPECT_EQ(FindInvalidUtf8("\xF8\x88\x80\x80\x80"), 0u);  // old 5-byte form
  EXPECT_EQ(FindInvalidUtf8("\xFC\x84\x80\x80\x80\x80"), 0u);
  EXPECT_EQ(FindInvalidUtf8("\xFE"), 0u);
  EXPECT_EQ(FindInvalidUtf8("\xFF"), 0u);
}

TEST(FindInvalidUtf8Test, TruncatedSequencesAreInvalid) {
  EXPECT_EQ(FindInvalidUtf8("\xC3"), 0u);
  EXPECT_EQ(FindInvalidUtf8("ab\xE2\x82"), 2u);
  EXPECT_EQ(FindInvalidUtf8("\xF0\x9F\x98"), 0u);
  // Cut short by a non-continuation byte rather than the end.
  EXPECT_EQ(FindInvalidUtf8("\xE2\x82x"), 0u);
  EXPECT_EQ(FindInvalidUtf8("\xC3("), 0u);
  EXPECT_EQ(FindInvalidUtf8("\xF0\x9F\x98\xC3\xA9"), 0u);
}

TEST(FindInvalidUtf8Test, LoneContinuationBytesAreInvalid) {
  EXPECT_EQ(FindInvalidUtf8("\x80"), 0u);
  EXPECT_EQ(FindInvalidUtf8("\xBF"), 0u);
  EXPECT_EQ(FindInvalidUtf8("a\xC3\xA9\xA9"), 3u);  // one continuation too many
}

TEST(FindInvalidUtf8Test, ReportsTheFirstBadByte) {
  EXPECT_EQ(FindInvalidUtf8("\xE2\x82\xAC\xE2\x82\xAC\x80\xFF"), 6u);
}

TEST(ParseJsonStrictTest, ParsesValidDocument) {
  absl::StatusOr<nlohmann::json> j = ParseJsonStrict(
      R"({"a": 1, "b": [true, null, "x"], "c": {"d": 2.5}})", "cfg.json");
  ASSERT_TRUE(j.ok()) << j.status();
  EXPECT_EQ((*j)["a"], 1);
  EXPECT_EQ((*j)["b"].size(), 3u);
  EXPECT_EQ((*j)["c"]["d"], 2.5);
  EXPECT_TRUE(ParseJsonStrict("[]", "x").ok());
  EXPECT_TRUE(ParseJsonStrict("  42  ", "x").ok());
}

TEST(ParseJsonStrictTest, DuplicateKeysDetectedAtAnyDepth) {
  struct Case {
    const char* json;
    const char* key;
  };
  for (const Case& c : {
           Case{R"({"a": 1, "a": 2})", "a"},
           Case{R"({"a": {"b": 1, "b": 1}})", "b"},
           Case{R"({"a": {"b": {"c": {"d": 1, "e": 2, "d": 3}}}})", "d"},
           Case{R"([{"x": 1, "x": 2}])", "x"},
           Case{R"({"l": [[{"k": [], "k": {}}]]})", "k"},
           // Back at the outer object after a nested array of objects.
           Case{R"({"a": [1, {"a": 2}], "a": 3})", "a"},
           // Escapes decode to the same key.
           Case{R"({"a": 1, "\u0061": 2})", "a"},
       }) {
    absl::StatusOr<nlohmann::json> j = ParseJsonStrict(c.json, "cfg.json");
    EXPECT_EQ(j.status(), absl::InvalidArgumentError(absl::StrCat(
                              "cfg.json: duplicate JSON key '", c.key, "'")))
        << c.json;
  }
}

TEST(ParseJsonStrictTest, SameKeysInDifferentObjectsAreNotDuplicates) {
  for (const char* json : {
           R"([{"a": 1}, {"a": 2}, {"a": 3}])",
           R"({"l": [{"k": 1}, {"k": 2}], "k": 3})",
           R"({"a": {"k": 1}, "b": {"k": 2}})",
           R"({"k": {"k": {"k": 1}}})",
           R"({"m": [[{"x": 1}], [{"x": 2}]], "x": [{"x": {"x": 0}}]})",
       }) {
    absl::StatusOr<nlohmann::json> j = ParseJsonStrict(json, "cfg.json");
    EXPECT_TRUE(j.ok()) << json << ": " << j.status();
  }
  absl::StatusOr<nlohmann::json> j =
      ParseJsonStrict(R"([{"a": 1}, {"a": 2}])", "cfg.json");
  ASSERT_TRUE(j.ok());
  EXPECT_EQ((*j)[1]["a"], 2);
}

TEST(ParseJsonStrictTest, InvalidJsonNamesLabelAndPosition) {
  absl::StatusOr<nlohmann::json> j = ParseJsonStrict("{\"a\": ", "cfg.json");
  EXPECT_EQ(j.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(
      absl::StartsWith(j.status().message(), "cfg.json: not valid JSON: "))
      << j.status();
  EXPECT_TRUE(absl::StrContains(j.status().message(), "parse error at line 1"))
      << j.status();

  for (const char* bad : {"", "{", "{} {}", "{\"a\": 1,}", "[1, 2", "nul",
                          "{'a': 1}", "{\"a\" 1}"}) {
    absl::StatusOr<nlohmann::json> r = ParseJsonStrict(bad, "idx.json");
    EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument) << bad;
    EXPECT_TRUE(
        absl::StartsWith(r.status().message(), "idx.json: not valid JSON"))
        << bad << ": " << r.status();
  }
}

TEST(ParseJsonStrictTest, InvalidUtf8IsRejectedBeforeParsing) {
  absl::StatusOr<nlohmann::json> j =
      ParseJsonStrict("{\"k\": \"\xED\xA0\x80\"}", "cfg.json");
  EXPECT_EQ(j.status(),
            absl::InvalidArgumentError("cfg.json: not valid UTF-8 (byte 7)"));
}

TEST(DumpJsonTest, DumpsOrSaysWhyNot) {
  const nlohmann::json ok = {{"a", 1}, {"b", "x"}};
  absl::StatusOr<std::string> text = DumpJson(ok, "ok");
  ASSERT_TRUE(text.ok()) << text.status();
  EXPECT_EQ(*text, ok.dump());
  text = DumpJson(ok, "ok", 2);
  ASSERT_TRUE(text.ok());
  EXPECT_EQ(*text, ok.dump(2));
  // A string that is not UTF-8 makes nlohmann throw: a status instead.
  const nlohmann::json bad = {{"name", std::string("\xff\xfe")}};
  absl::Status s = DumpJson(bad, "journal entry 3: not serialisable").status();
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(
      absl::StartsWith(s.message(), "journal entry 3: not serialisable: "))
      << s;
  EXPECT_TRUE(absl::StrContains(s.message(), "UTF-8")) << s;
}

}  // namespace
}  // namespace tailor
