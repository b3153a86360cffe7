// A corpus of crafted malformed safetensors inputs, generated in code.
//
// Every case is written to a fresh temporary directory and opened in-process
// with SafetensorsFile::Open (single files) or Checkpoint::Open (sharded
// directories). Each must fail with the expected status code and a message
// naming the file, the tensor where there is one, and the rule. A crash in
// any case fails the whole binary.
//
// The file also replaces the global operator new/delete with counting
// versions, so that each case can assert that Open() never holds more than
// the input's size in live heap bytes plus a fixed slack (kAllocationSlack),
// however large the sizes the input claims. Only LargeHeaderCases, whose
// parsed structures legitimately outgrow their JSON text, get a linear
// multiplier instead (kLargeHeaderAmplification).

#include <gtest/gtest.h>
#include <malloc.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cctype>
#include <climits>
#include <cstdint>
#include <cstdlib>
#include <functional>
#include <iostream>
#include <memory>
#include <new>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/string_view.h"
#include "io/checkpoint.h"
#include "io/safetensors_file.h"
#include "io/safetensors_header.h"
#include "testing/test_util.h"
#include "util/file_util.h"

// ---------------------------------------------------------------------------
// Counting allocator.
//
// Every operator new/delete in the binary goes through malloc/free (so ASan
// still sees, and checks, every heap block) and adjusts a live-byte counter by
// malloc_usable_size() of the block; the same block reports the same size at
// allocation and release, so the counter stays exact without a header. While
// tracking is on, the peak of the counter is recorded.

namespace {

std::atomic<int64_t> g_live_bytes{0};
std::atomic<int64_t> g_peak_bytes{0};
std::atomic<bool> g_tracking{false};

void CountAllocation(void* p) {
  const int64_t n = static_cast<int64_t>(malloc_usable_size(p));
  const int64_t live = g_live_bytes.fetch_add(n, std::memory_order_relaxed) + n;
  if (g_tracking.load(std::memory_order_relaxed)) {
    int64_t peak = g_peak_bytes.load(std::memory_order_relaxed);
    while (live > peak && !g_peak_bytes.compare_exchange_weak(
                              peak, live, std::memory_order_relaxed)) {
    }
  }
}

void CountedFree(void* p) noexcept {
  if (p == nullptr) return;
  g_live_bytes.fetch_sub(static_cast<int64_t>(malloc_usable_size(p)),
                         std::memory_order_relaxed);
  std::free(p);
}

void* TryAllocate(std::size_t size, std::size_t alignment) noexcept {
  if (size == 0) size = 1;
  void* p = nullptr;
  if (alignment <= alignof(std::max_align_t)) {
    p = std::malloc(size);
  } else if (::posix_memalign(&p, std::max(alignment, sizeof(void*)), size) !=
             0) {
    p = nullptr;
  }
  if (p != nullptr) CountAllocation(p);
  return p;
}

void* AllocateOrThrow(std::size_t size, std::size_t alignment) {
  for (;;) {
    if (void* p = TryAllocate(size, alignment)) return p;
    std::new_handler handler = std::get_new_handler();
    if (handler == nullptr) throw std::bad_alloc();
    handler();
  }
}

void* AllocateOrNull(std::size_t size, std::size_t alignment) noexcept {
  try {
    return AllocateOrThrow(size, alignment);
  } catch (...) {
    return nullptr;
  }
}

constexpr std::size_t kDefaultAlignment = alignof(std::max_align_t);

}  // namespace

void* operator new(std::size_t n) {
  return AllocateOrThrow(n, kDefaultAlignment);
}
void* operator new[](std::size_t n) {
  return AllocateOrThrow(n, kDefaultAlignment);
}
void* operator new(std::size_t n, const std::nothrow_t&) noexcept {
  return AllocateOrNull(n, kDefaultAlignment);
}
void* operator new[](std::size_t n, const std::nothrow_t&) noexcept {
  return AllocateOrNull(n, kDefaultAlignment);
}
void* operator new(std::size_t n, std::align_val_t a) {
  return AllocateOrThrow(n, static_cast<std::size_t>(a));
}
void* operator new[](std::size_t n, std::align_val_t a) {
  return AllocateOrThrow(n, static_cast<std::size_t>(a));
}
void* operator new(std::size_t n, std::align_val_t a,
                   const std::nothrow_t&) noexcept {
  return AllocateOrNull(n, static_cast<std::size_t>(a));
}
void* operator new[](std::size_t n, std::align_val_t a,
                     const std::nothrow_t&) noexcept {
  return AllocateOrNull(n, static_cast<std::size_t>(a));
}
void operator delete(void* p) noexcept { CountedFree(p); }
void operator delete[](void* p) noexcept { CountedFree(p); }
void operator delete(void* p, const std::nothrow_t&) noexcept {
  CountedFree(p);
}
void operator delete[](void* p, const std::nothrow_t&) noexcept {
  CountedFree(p);
}
void operator delete(void* p, std::size_t) noexcept { CountedFree(p); }
void operator delete[](void* p, std::size_t) noexcept { CountedFree(p); }
void operator delete(void* p, std::align_val_t) noexcept { CountedFree(p); }
void operator delete[](void* p, std::align_val_t) noexcept { CountedFree(p); }
void operator delete(void* p, std::size_t, std::align_val_t) noexcept {
  CountedFree(p);
}
void operator delete[](void* p, std::size_t, std::align_val_t) noexcept {
  CountedFree(p);
}
void operator delete(void* p, std::align_val_t,
                     const std::nothrow_t&) noexcept {
  CountedFree(p);
}
void operator delete[](void* p, std::align_val_t,
                       const std::nothrow_t&) noexcept {
  CountedFree(p);
}

namespace tailor {
namespace {

using ::tailor::testing::AssembleSafetensors;
using ::tailor::testing::RawTensor;
using ::tailor::testing::TempDir;
using ::tailor::testing::WriteFileOrDie;
using ::tailor::testing::WriteShardedCheckpoint;

// Fixed allowance on top of the input size: error strings (the pickle
// refusal alone is ~500 bytes), absl::Status reps, nlohmann's lexer token
// buffer and parse_error exception, the SafetensorsFile/Checkpoint objects,
// std::map nodes and path strings.
constexpr int64_t kAllocationSlack = 64 * 1024;

// Heap growth while it is tracking: the peak of live operator-new bytes
// minus the live bytes at construction, up to Stop().
class AllocationProbe {
 public:
  AllocationProbe() {
    baseline_ = g_live_bytes.load();
    g_peak_bytes.store(baseline_);
    g_tracking.store(true);
  }
  ~AllocationProbe() { g_tracking.store(false); }
  int64_t Stop() {
    g_tracking.store(false);
    return g_peak_bytes.load() - baseline_;
  }

 private:
  int64_t baseline_ = 0;
};

// ---------------------------------------------------------------------------
// Inputs.

// A string literal's bytes, embedded NULs included.
template <size_t N>
std::string Bytes(const char (&literal)[N]) {
  return std::string(literal, N - 1);
}

// The 8-byte little-endian header length prefix.
std::string Prefix(uint64_t n) {
  std::string out(8, '\0');
  for (int i = 0; i < 8; ++i) out[i] = static_cast<char>((n >> (8 * i)) & 0xff);
  return out;
}

// A safetensors file: `header` with its true length, then `data_bytes` bytes.
std::string File(absl::string_view header, size_t data_bytes = 0) {
  return AssembleSafetensors(header, std::string(data_bytes, '\x5a'));
}

// A one-tensor header {"<name>": {"dtype": .., "shape": [..],
// "data_offsets": [..]}}; shape and offsets are raw JSON array contents.
std::string One(absl::string_view name, absl::string_view dtype,
                absl::string_view shape, absl::string_view offsets) {
  return absl::StrCat("{\"", name, "\":{\"dtype\":\"", dtype, "\",\"shape\":[",
                      shape, "],\"data_offsets\":[", offsets, "]}}");
}

// Same with the tensor's object body given verbatim.
std::string OneRaw(absl::string_view name, absl::string_view body) {
  return absl::StrCat("{\"", name, "\":", body, "}");
}

RawTensor Raw(const std::string& name, size_t bytes) {
  return RawTensor{
      name, "U8", {static_cast<int64_t>(bytes)}, std::string(bytes, '\x11')};
}

std::string ShardName(int i, int n) {
  return absl::StrCat("model-0000", i, "-of-0000", n, ".safetensors");
}

std::string IndexJson(absl::string_view weight_map_body) {
  return absl::StrCat("{\"metadata\": {\"total_size\": 0}, \"weight_map\": {",
                      weight_map_body, "}}");
}

// ---------------------------------------------------------------------------
// The corpus.

struct Built {
  std::string open_path;    // what is opened
  std::string named_path;   // the path the error must name
  bool checkpoint = false;  // Checkpoint::Open instead of SafetensorsFile::Open
};

struct CorpusCase {
  std::string name;  // gtest parameter name: [A-Za-z0-9_]
  std::function<Built(const TempDir&)> build;
  absl::StatusCode code;  // kOk for the positive controls
  std::vector<std::string> substrings;
  // Rejected from the 8-byte prefix alone: no allocation may depend on the
  // claimed header length, so the bound is the slack without the file size.
  bool prefix_only = false;
  // Multiplier on the input size in the memory bound (LargeHeaderCases).
  int64_t amplification = 1;
  // Positive controls: extra checks on the opened file.
  std::function<void(const SafetensorsFile&)> verify;
};

std::ostream& operator<<(std::ostream& os, const CorpusCase& c) {
  return os << c.name;
}

constexpr absl::StatusCode kInvalid = absl::StatusCode::kInvalidArgument;

CorpusCase FileCase(std::string name, std::string bytes, absl::StatusCode code,
                    std::vector<std::string> substrings,
                    std::string file_name = "model.safetensors") {
  CorpusCase c;
  c.name = std::move(name);
  c.code = code;
  c.substrings = std::move(substrings);
  c.build = [bytes = std::move(bytes),
             file_name = std::move(file_name)](const TempDir& dir) {
    const std::string path = dir.Join(file_name);
    WriteFileOrDie(path, bytes);
    return Built{path, path, false};
  };
  return c;
}

// A file of `total_size` bytes (sparse beyond `head`).
CorpusCase SparseFileCase(std::string name, std::string head,
                          uint64_t total_size, std::vector<std::string> subs) {
  CorpusCase c;
  c.name = std::move(name);
  c.code = kInvalid;
  c.substrings = std::move(subs);
  c.build = [head = std::move(head), total_size](const TempDir& dir) {
    const std::string path = dir.Join("model.safetensors");
    WriteFileOrDie(path, head);
    if (::truncate(path.c_str(), static_cast<off_t>(total_size)) != 0) {
      ADD_FAILURE() << "truncate " << path;
    }
    return Built{path, path, false};
  };
  return c;
}

// A sharded checkpoint directory; `build` writes it and returns the path the
// error must name (the index unless a shard is at fault).
CorpusCase DirCase(std::string name,
                   std::function<std::string(const TempDir&)> build,
                   absl::StatusCode code, std::vector<std::string> subs) {
  CorpusCase c;
  c.name = std::move(name);
  c.code = code;
  c.substrings = std::move(subs);
  c.build = [build = std::move(build)](const TempDir& dir) {
    std::string named = build(dir);
    return Built{dir.path(), std::move(named), true};
  };
  return c;
}

// Writes an index with the given text (two shards "model-0000{1,2}-of-00002"
// holding "a" and "b" already on disk) and returns the index path.
std::function<std::string(const TempDir&)> WithIndex(std::string index) {
  return [index = std::move(index)](const TempDir& dir) {
    WriteShardedCheckpoint(dir.path(), {{Raw("a", 4)}, {Raw("b", 2)}});
    const std::string path = dir.Join(kIndexFileName);
    WriteFileOrDie(path, index);
    return path;
  };
}

std::string Spaces(size_t n) { return std::string(n, ' '); }

std::vector<CorpusCase> LengthPrefixCases() {
  std::vector<CorpusCase> cases;
  auto prefix_case = [&](CorpusCase c) {
    c.prefix_only = true;
    cases.push_back(std::move(c));
  };
  prefix_case(FileCase("EmptyFile", "", kInvalid,
                       {"not a safetensors file",
                        "0 bytes is shorter than "
                        "the 8-byte header length "
                        "prefix"}));
  prefix_case(FileCase("FileOf7Bytes", Bytes("\x02\0\0\0\0\0\0"), kInvalid,
                       {"not a safetensors file",
                        "7 bytes is shorter than the 8-byte header length "
                        "prefix"}));
  prefix_case(FileCase(
      "HeaderLength2Pow63", Prefix(uint64_t{1} << 63) + "{}", kInvalid,
      {"not a safetensors file: the header length field (the first 8 bytes) "
       "exceeds the limit of 100000000 bytes"}));
  prefix_case(FileCase(
      "HeaderLength2Pow64Minus1", Prefix(~uint64_t{0}) + "{}", kInvalid,
      {"not a safetensors file: the header length field (the first 8 bytes) "
       "exceeds the limit of 100000000 bytes"}));
  // 100 MB + 1 in a file that really holds that many bytes after the prefix
  // (sparse), so only the size limit is violated.
  prefix_case(SparseFileCase(
      "HeaderLength100MBPlus1", Prefix(100'000'001) + "{}", 8 + 100'000'001,
      {"not a safetensors file: the header length field (the first 8 bytes) "
       "exceeds the limit of 100000000 bytes",
       "(the file has 100000009 bytes)"}));
  prefix_case(FileCase(
      "HeaderLengthPastEndOfFileByOne", Prefix(3) + "{}", kInvalid,
      {"not a safetensors file, or truncated: the header length field (the "
       "first 8 bytes) exceeds the file size minus the 8-byte prefix (2)"}));
  prefix_case(FileCase(
      "HeaderLength99MBInTinyFile", Prefix(99'999'999) + "{}", kInvalid,
      {"header length field (the first 8 bytes) exceeds the file size minus "
       "the 8-byte prefix (2)"}));
  prefix_case(FileCase("PrefixOnlyClaims16Bytes", Prefix(16), kInvalid,
                       {"header length field (the first 8 bytes) exceeds the "
                        "file size minus the 8-byte prefix (0)"}));
  // Length 0: the header is the empty string.
  cases.push_back(FileCase("HeaderLengthZeroEmptyFile", Prefix(0), kInvalid,
                           {"safetensors header does not begin with '{'"}));
  cases.push_back(FileCase("HeaderLengthZeroThenData", Prefix(0) + "{}",
                           kInvalid,
                           {"safetensors header does not begin with '{'"}));
  return cases;
}

std::vector<CorpusCase> JsonSyntaxCases() {
  std::vector<CorpusCase> cases;
  const std::vector<std::string> not_brace = {
      "safetensors header does not begin with '{'"};
  // Non-objects never reach the JSON parser: the first byte is not '{'.
  cases.push_back(FileCase("TopLevelArray", File("[]"), kInvalid, not_brace));
  cases.push_back(FileCase("TopLevelArrayOfObject", File(R"([{"a":{}}])"),
                           kInvalid, not_brace));
  cases.push_back(
      FileCase("TopLevelString", File(R"("{}")"), kInvalid, not_brace));
  cases.push_back(FileCase("TopLevelNumber", File("42"), kInvalid, not_brace));
  cases.push_back(FileCase("TopLevelNull", File("null"), kInvalid, not_brace));
  cases.push_back(FileCase("LeadingSpace", File(" {}"), kInvalid, not_brace));
  cases.push_back(
      FileCase("LeadingNewline", File("\n{}"), kInvalid, not_brace));
  cases.push_back(FileCase("Utf8ByteOrderMark", File("\xEF\xBB\xBF{}"),
                           kInvalid, not_brace));

  // Anything but spaces after the closing brace; a header whose object never
  // closes is reported as truncated.
  const std::vector<std::string> after = {
      "safetensors header has bytes after the JSON object; only space (0x20) "
      "padding may follow it"};
  cases.push_back(
      FileCase("GarbageAfterObject", File("{}garbage"), kInvalid, after));
  cases.push_back(FileCase("TabPaddingAfterObject", File("{}\t\t\t\t\t\t"),
                           kInvalid, after));
  cases.push_back(
      FileCase("NewlinePaddingAfterObject", File("{}\n"), kInvalid, after));
  cases.push_back(FileCase("CrLfThenSpacesAfterObject", File("{}\r\n    "),
                           kInvalid, after));
  cases.push_back(FileCase("NulPaddingAfterObject",
                           File(Bytes("{}\0\0\0\0\0\0")), kInvalid, after));
  cases.push_back(FileCase(
      "TruncatedJsonMidTensor",
      File(R"({"w":{"dtype":"F32","shape":[2],"data_offs)"), kInvalid,
      {"safetensors header is truncated: the JSON object is not closed"}));
  cases.push_back(FileCase("TruncatedJsonOpenBraceOnly", File("{"), kInvalid,
                           {"safetensors header is truncated"}));
  // Ends in '}' but the JSON is incomplete or has a second value: reported
  // by the JSON parser with its position.
  cases.push_back(FileCase(
      "TruncatedJsonMissingFinalBrace",
      File(R"({"w":{"dtype":"F32","shape":[1],"data_offsets":[0,4]})", 4),
      kInvalid,
      {"safetensors header is not valid JSON (byte ", "parse error"}));
  cases.push_back(FileCase("SecondObjectAfterFirst", File("{}{}"), kInvalid,
                           {"safetensors header is not valid JSON (byte ",
                            "expected end of input"}));
  cases.push_back(FileCase("GarbageThenBrace", File("{}x}"), kInvalid,
                           {"safetensors header is not valid JSON (byte "}));
  cases.push_back(FileCase("TrailingCommaInObject",
                           File(R"({"__metadata__":{"a":"b"},})"), kInvalid,
                           {"safetensors header is not valid JSON (byte "}));
  cases.push_back(FileCase("CommentInsideObject", File("{/* c */}"), kInvalid,
                           {"safetensors header is not valid JSON (byte "}));
  cases.push_back(FileCase("SingleQuotedKey", File("{'a':{}}"), kInvalid,
                           {"safetensors header is not valid JSON (byte "}));
  cases.push_back(FileCase("UnescapedControlCharInKey", File("{\"a\tb\":{}}"),
                           kInvalid,
                           {"safetensors header is not valid JSON (byte "}));
  return cases;
}

std::vector<CorpusCase> Utf8Cases() {
  std::vector<CorpusCase> cases;
  // Bad bytes inside a __metadata__ value: {"__metadata__":{"k":"<here>"}}.
  const std::string before = R"({"__metadata__":{"k":")";
  const std::string after = R"("}})";
  const std::string at = absl::StrCat(
      "safetensors header is not valid UTF-8 "
      "(byte ",
      before.size(), ")");
  auto utf8_case = [&](const std::string& name, const std::string& bad) {
    cases.push_back(FileCase(name, File(before + bad + after), kInvalid, {at}));
  };
  utf8_case("Utf8OverlongSlash", "\xC0\xAF");
  utf8_case("Utf8OverlongNul", "\xC0\x80");
  utf8_case("Utf8OverlongThreeByte", "\xE0\x80\xAF");
  utf8_case("Utf8LoneContinuation", "\x80");
  utf8_case("Utf8Surrogate", "\xED\xA0\x80");
  utf8_case("Utf8AboveMaxCodePoint", "\xF4\x90\x80\x80");
  utf8_case("Utf8ByteFF", "\xFF");
  // A multibyte sequence cut by the end of the header.
  cases.push_back(FileCase("Utf8TruncatedAtEndOfHeader",
                           File("{}      \xE2\x82"), kInvalid,
                           {"safetensors header is not valid UTF-8 (byte 8)"}));
  // In a tensor name: {"w<here>":...}.
  cases.push_back(FileCase("Utf8InvalidInTensorName",
                           File(One("w\xC3(", "F32", "1", "0,4"), 4), kInvalid,
                           {"safetensors header is not valid UTF-8 (byte 3)"}));
  return cases;
}

std::vector<CorpusCase> StructureCases() {
  std::vector<CorpusCase> cases;
  const std::string w =
      R"("w":{"dtype":"F32","shape":[1],"data_offsets":[0,4]})";
  cases.push_back(FileCase("DuplicateTensorKey",
                           File(absl::StrCat("{", w, ",", w, "}"), 4), kInvalid,
                           {"safetensors header has duplicate key 'w'"}));
  cases.push_back(FileCase(
      "DuplicateTensorKeyFarApart",
      File(absl::StrCat(
               R"({"w":{"dtype":"U8","shape":[4],"data_offsets":[0,4]},)",
               R"("x":{"dtype":"U8","shape":[0],"data_offsets":[4,4]},)",
               R"("w":{"dtype":"U8","shape":[2],"data_offsets":[4,6]}})"),
           6),
      kInvalid, {"safetensors header has duplicate key 'w'"}));
  cases.push_back(FileCase(
      "DuplicateMetadata",
      File(R"({"__metadata__":{"a":"1"},"__metadata__":{"b":"2"}})"), kInvalid,
      {"safetensors header has duplicate key '__metadata__'"}));
  cases.push_back(
      FileCase("DuplicateKeyInsideMetadata",
               File(R"({"__metadata__":{"k":"1","k":"2"}})"), kInvalid,
               {"safetensors header __metadata__ has duplicate key 'k'"}));
  cases.push_back(
      FileCase("DuplicateDtypeField",
               File(OneRaw("w", R"({"dtype":"F32","dtype":"F32","shape":[1],)"
                                R"("data_offsets":[0,4]})"),
                    4),
               kInvalid, {"tensor 'w': duplicate key 'dtype'"}));
  cases.push_back(
      FileCase("DuplicateShapeField",
               File(OneRaw("w", R"({"dtype":"F32","shape":[1],"shape":[1],)"
                                R"("data_offsets":[0,4]})"),
                    4),
               kInvalid, {"tensor 'w': duplicate key 'shape'"}));
  cases.push_back(FileCase(
      "DuplicateDataOffsetsField",
      File(OneRaw("w", R"({"dtype":"F32","shape":[1],"data_offsets":[0,4],)"
                       R"("data_offsets":[0,4]})"),
           4),
      kInvalid, {"tensor 'w': duplicate key 'data_offsets'"}));
  cases.push_back(FileCase(
      "MetadataValueNumber", File(R"({"__metadata__":{"k":1}})"), kInvalid,
      {"safetensors header __metadata__ value for key 'k' must be a string, "
       "not a number"}));
  cases.push_back(FileCase(
      "MetadataValueObject", File(R"({"__metadata__":{"k":{"x":"y"}}})"),
      kInvalid,
      {"__metadata__ value for key 'k' must be a string, not an object"}));
  cases.push_back(FileCase(
      "MetadataValueArray", File(R"({"__metadata__":{"k":["v"]}})"), kInvalid,
      {"__metadata__ value for key 'k' must be a string, not an array"}));
  cases.push_back(FileCase(
      "MetadataValueNull", File(R"({"__metadata__":{"k":null}})"), kInvalid,
      {"__metadata__ value for key 'k' must be a string, not null"}));
  cases.push_back(FileCase(
      "MetadataValueBool", File(R"({"__metadata__":{"k":true}})"), kInvalid,
      {"__metadata__ value for key 'k' must be a string, not a boolean"}));
  cases.push_back(FileCase(
      "MetadataNotObjectString", File(R"({"__metadata__":"format=pt"})"),
      kInvalid,
      {"safetensors header value of key '__metadata__' is a string; it must "
       "be an object"}));
  cases.push_back(FileCase(
      "MetadataNotObjectArray", File(R"({"__metadata__":[]})"), kInvalid,
      {"value of key '__metadata__' is an array; it must be an object"}));
  cases.push_back(FileCase(
      "TensorValueArray", File(R"({"w":[0,4]})"), kInvalid,
      {"safetensors header value of key 'w' is an array; it must be an "
       "object"}));
  cases.push_back(
      FileCase("TensorValueString", File(R"({"w":"F32"})"), kInvalid,
               {"value of key 'w' is a string; it must be an object"}));
  cases.push_back(FileCase("TensorValueNumber", File(R"({"w":4})"), kInvalid,
                           {"value of key 'w' is a number; it must be an "
                            "object"}));
  cases.push_back(FileCase("TensorValueNull", File(R"({"w":null})"), kInvalid,
                           {"value of key 'w' is null; it must be an object"}));
  cases.push_back(FileCase("EmptyTensorName",
                           File(One("", "F32", "1", "0,4"), 4), kInvalid,
                           {"safetensors header a tensor has an empty name"}));
  return cases;
}

std::vector<CorpusCase> FieldCases() {
  std::vector<CorpusCase> cases;
  const std::string known =
      "(known: BOOL, U8, I8, I16, U16, I32, U32, I64, U64, F8_E4M3, F8_E5M2, "
      "F16, BF16, F32, F64)";
  cases.push_back(FileCase("UnknownDtype",
                           File(One("w", "F128", "1", "0,16"), 16), kInvalid,
                           {"tensor 'w': unknown dtype 'F128' " + known}));
  cases.push_back(FileCase("LowercaseDtype",
                           File(One("w", "f32", "1", "0,4"), 4), kInvalid,
                           {"tensor 'w': unknown dtype 'f32'"}));
  cases.push_back(FileCase("EmptyDtype", File(One("w", "", "1", "0,4"), 4),
                           kInvalid, {"tensor 'w': unknown dtype ''"}));
  cases.push_back(FileCase(
      "DtypeNumber",
      File(OneRaw("w", R"({"dtype":4,"shape":[1],"data_offsets":[0,4]})"), 4),
      kInvalid, {"tensor 'w': dtype is a number; it must be a string"}));
  cases.push_back(FileCase(
      "DtypeArray",
      File(OneRaw("w", R"({"dtype":["F32"],"shape":[1],"data_offsets":[0,4]})"),
           4),
      kInvalid, {"tensor 'w': dtype is an array; it must be a string"}));
  cases.push_back(FileCase(
      "DtypeNull",
      File(OneRaw("w", R"({"dtype":null,"shape":[1],"data_offsets":[0,4]})"),
           4),
      kInvalid, {"tensor 'w': dtype is null; it must be a string"}));
  cases.push_back(
      FileCase("MissingDtype",
               File(OneRaw("w", R"({"shape":[1],"data_offsets":[0,4]})"), 4),
               kInvalid, {"tensor 'w': missing required field(s) dtype"}));
  cases.push_back(
      FileCase("MissingShape",
               File(OneRaw("w", R"({"dtype":"F32","data_offsets":[0,4]})"), 4),
               kInvalid, {"tensor 'w': missing required field(s) shape"}));
  cases.push_back(
      FileCase("MissingDataOffsets",
               File(OneRaw("w", R"({"dtype":"F32","shape":[1]})"), 4), kInvalid,
               {"tensor 'w': missing required field(s) data_offsets"}));
  cases.push_back(FileCase(
      "MissingAllFields", File(OneRaw("w", "{}")), kInvalid,
      {"tensor 'w': missing required field(s) dtype, shape, data_offsets"}));
  cases.push_back(FileCase(
      "UnknownTensorField",
      File(OneRaw("w", R"({"dtype":"F32","shape":[1],"data_offsets":[0,4],)"
                       R"("offsets":[0,4]})"),
           4),
      kInvalid,
      {"tensor 'w': unknown field 'offsets' (allowed: dtype, shape, "
       "data_offsets)"}));
  cases.push_back(FileCase(
      "ShapeNotArray",
      File(OneRaw("w", R"({"dtype":"F32","shape":1,"data_offsets":[0,4]})"), 4),
      kInvalid,
      {"tensor 'w': shape is a number; it must be an array of integers"}));
  cases.push_back(FileCase(
      "NegativeShapeDim", File(One("w", "F32", "2,-1", "0,4"), 4), kInvalid,
      {"tensor 'w': shape dimension 1 has negative value -1; it must be a "
       "non-negative integer"}));
  cases.push_back(FileCase(
      "FloatShapeDim", File(One("w", "F32", "1.0", "0,4"), 4), kInvalid,
      {"tensor 'w': shape dimension 0 has value 1.0, which is not an integer "
       "in [0, 2^63)"}));
  cases.push_back(FileCase("ExponentShapeDim",
                           File(One("w", "U8", "1e1", "0,10"), 10), kInvalid,
                           {"tensor 'w': shape dimension 0 has value 1e1, "
                            "which is not an integer"}));
  cases.push_back(FileCase(
      "StringShapeDim", File(One("w", "F32", "\"1\"", "0,4"), 4), kInvalid,
      {"tensor 'w': shape dimension 0 is a string; it must be a non-negative "
       "integer"}));
  cases.push_back(FileCase(
      "NestedArrayShapeDim", File(One("w", "F32", "[1]", "0,4"), 4), kInvalid,
      {"tensor 'w': shape dimension 0 is an array; it must be a non-negative "
       "integer"}));
  cases.push_back(FileCase(
      "ShapeDim2Pow63", File(One("w", "U8", "9223372036854775808", "0,0")),
      kInvalid,
      {"tensor 'w': shape dimension 0 is 9223372036854775808, which exceeds "
       "2^63 - 1"}));
  cases.push_back(FileCase(
      "ShapeDim2Pow64", File(One("w", "U8", "18446744073709551616", "0,0")),
      kInvalid,
      {"tensor 'w': shape dimension 0 has value 18446744073709551616, which "
       "is not an integer in [0, 2^63)"}));
  cases.push_back(FileCase(
      "NumelOverflowsUint64",
      File(One("w", "U8", "4294967296,4294967296", "0,0")), kInvalid,
      {"tensor 'w': shape [4294967296, 4294967296] has more than 2^63 - 1 "
       "elements"}));
  cases.push_back(FileCase(
      "NumelIs2Pow63", File(One("w", "U8", "4611686018427387904,2", "0,0")),
      kInvalid,
      {"tensor 'w': shape [4611686018427387904, 2] has more than 2^63 - 1 "
       "elements"}));
  cases.push_back(FileCase(
      "NbytesOverflowF64", File(One("w", "F64", "4611686018427387904", "0,0")),
      kInvalid,
      {"tensor 'w': shape [4611686018427387904] x F64 overflows a 64-bit byte "
       "count"}));
  cases.push_back(FileCase(
      "NbytesOverflowI32",
      File(One("w", "I32", "2,2305843009213693952", "0,0")), kInvalid,
      {"tensor 'w': shape [2, 2305843009213693952] x I32 overflows a 64-bit "
       "byte count"}));
  std::vector<std::string> ones(65, "1");
  cases.push_back(FileCase(
      "Rank65", File(One("w", "U8", absl::StrJoin(ones, ","), "0,1"), 1),
      kInvalid, {"tensor 'w': shape has more than 64 dimensions"}));
  std::vector<std::string> many(100000, "1");
  cases.push_back(FileCase(
      "Rank100000", File(One("w", "U8", absl::StrJoin(many, ","), "0,1"), 1),
      kInvalid, {"tensor 'w': shape has more than 64 dimensions"}));
  return cases;
}

std::vector<CorpusCase> OffsetCases() {
  std::vector<CorpusCase> cases;
  cases.push_back(FileCase(
      "DataOffsetsEmpty", File(One("w", "F32", "0", "")), kInvalid,
      {"tensor 'w': data_offsets has 0 elements; it must be [begin, end]"}));
  cases.push_back(FileCase(
      "DataOffsetsOneElement", File(One("w", "F32", "1", "4"), 4), kInvalid,
      {"tensor 'w': data_offsets has 1 elements; it must be [begin, end]"}));
  cases.push_back(FileCase(
      "DataOffsetsThreeElements", File(One("w", "F32", "1", "0,4,4"), 4),
      kInvalid,
      {"tensor 'w': data_offsets has more than 2 elements; it must be [begin, "
       "end]"}));
  cases.push_back(FileCase(
      "DataOffsetsNotArray",
      File(OneRaw("w", R"({"dtype":"F32","shape":[1],"data_offsets":"0,4"})"),
           4),
      kInvalid,
      {"tensor 'w': data_offsets is a string; it must be [begin, "
       "end]"}));
  cases.push_back(FileCase(
      "DataOffsetNegative", File(One("w", "F32", "1", "-4,0"), 4), kInvalid,
      {"tensor 'w': data_offsets[0] has negative value -4; it must be a "
       "non-negative integer"}));
  cases.push_back(FileCase(
      "DataOffsetFloat", File(One("w", "F32", "1", "0,4.0"), 4), kInvalid,
      {"tensor 'w': data_offsets[1] has value 4.0, which is not an integer in "
       "[0, 2^63)"}));
  cases.push_back(FileCase(
      "DataOffsetBeginGreaterThanEnd", File(One("w", "U8", "0", "8,4"), 8),
      kInvalid, {"tensor 'w': data_offsets [8, 4] have begin > end"}));
  cases.push_back(FileCase(
      "SizeMismatchTooFewBytes", File(One("w", "F32", "2", "0,4"), 4), kInvalid,
      {"tensor 'w': shape [2] of F32 needs 8 bytes but data_offsets [0, 4] "
       "span 4"}));
  cases.push_back(FileCase(
      "SizeMismatchTooManyBytes", File(One("w", "BF16", "2,2", "0,16"), 16),
      kInvalid,
      {"tensor 'w': shape [2, 2] of BF16 needs 8 bytes but data_offsets [0, "
       "16] span 16"}));
  cases.push_back(FileCase(
      "SizeMismatchScalar", File(One("w", "F64", "", "0,4"), 4), kInvalid,
      {"tensor 'w': shape [] of F64 needs 8 bytes but data_offsets [0, 4] "
       "span 4"}));
  // 2^64 - 2 bytes fits in 64 bits: reported as a mismatch, not an overflow.
  cases.push_back(
      FileCase("SizeMismatchHugeNbytes",
               File(One("w", "F16", "9223372036854775807", "0,0")), kInvalid,
               {"tensor 'w': shape [9223372036854775807] of F16 needs "
                "18446744073709551614 bytes but data_offsets [0, 0] span 0"}));
  cases.push_back(FileCase(
      "OverlappingOffsets",
      File(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
           R"("b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}})",
           12),
      kInvalid,
      {"tensor 'b': data_offsets [4, 12] overlap tensor 'a' which ends at 8"}));
  cases.push_back(FileCase(
      "IdenticalOffsets",
      File(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},)"
           R"("b":{"dtype":"I32","shape":[1],"data_offsets":[0,4]}})",
           4),
      kInvalid,
      {"tensor 'b': data_offsets [0, 4] overlap tensor 'a' which ends at 4"}));
  cases.push_back(FileCase(
      "ZeroSizeTensorInsideAnother",
      File(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
           R"("e":{"dtype":"F32","shape":[0],"data_offsets":[4,4]}})",
           8),
      kInvalid,
      {"tensor 'e': data_offsets [4, 4] overlap tensor 'a' which ends at 8"}));
  cases.push_back(FileCase(
      "HoleBetweenTensors",
      File(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},)"
           R"("b":{"dtype":"F32","shape":[1],"data_offsets":[8,12]}})",
           12),
      kInvalid,
      {"tensor 'b': data_offsets [8, 12] leave a hole of 4 bytes after offset "
       "4 (tensors must be contiguous)"}));
  cases.push_back(FileCase(
      "FirstTensorNotAtZero", File(One("w", "F32", "1", "4,8"), 8), kInvalid,
      {"tensor 'w': data_offsets [4, 8] leave a hole of 4 bytes after offset "
       "0"}));
  cases.push_back(FileCase(
      "OffsetsPastDataSection", File(One("w", "F32", "2", "0,8"), 4), kInvalid,
      {"tensor 'w': data_offsets [0, 8] extend past the end of the data "
       "section (4 bytes)"}));
  cases.push_back(FileCase(
      "OffsetsNearUint64Max",
      File(One("w", "U8", "7", "18446744073709551608,18446744073709551615"), 4),
      kInvalid,
      {"tensor 'w': data_offsets [18446744073709551608, 18446744073709551615] "
       "extend past the end of the data section (4 bytes)"}));
  cases.push_back(FileCase(
      "TensorClaimsTerabytes",
      File(One("w", "F32", "1000000,1000000", "0,4000000000000"), 4), kInvalid,
      {"tensor 'w': data_offsets [0, 4000000000000] extend past the end of "
       "the data section (4 bytes)"}));
  cases.push_back(FileCase(
      "TrailingBytesAfterLastTensor", File(One("w", "F32", "1", "0,4"), 6),
      kInvalid,
      {"safetensors header tensors cover 4 bytes but the data section has 6 (2 "
       "trailing bytes)"}));
  cases.push_back(FileCase(
      "EmptyHeaderWithData", File("{}", 3), kInvalid,
      {"tensors cover 0 bytes but the data section has 3 (3 trailing bytes)"}));
  return cases;
}

std::vector<CorpusCase> PickleCases() {
  std::vector<CorpusCase> cases;
  const std::string valid = File(One("w", "F32", "1", "0,4"), 4);
  // The start of a real `pickle.dumps(..., protocol=2)` stream.
  const std::string pickle2 =
      Bytes("\x80\x02}q\x00(X\x06\x00\x00\x00weightq\x01");
  const std::string pickle4 =
      Bytes("\x80\x04\x95\x1a\x00\x00\x00\x00\x00\x00\x00}");
  cases.push_back(FileCase("PickleMagicProtocol2", pickle2, kInvalid,
                           {"a Python pickle stream is refused",
                            "can execute arbitrary code", "safetensors"}));
  cases.push_back(FileCase("PickleMagicProtocol4", pickle4, kInvalid,
                           {"a Python pickle stream is refused"}));
  cases.push_back(
      FileCase("ZipMagic",
               Bytes("PK\x03\x04\x14\x00\x00\x00\x08\x00"
                     "archive/"),
               kInvalid,
               {"a PyTorch zip archive (torch.save format) is refused",
                "can execute arbitrary code"}));
  for (const char* ext : {".bin", ".pt", ".pth", ".ckpt", ".pkl", ".PT"}) {
    std::string name = absl::StrCat("ValidBytesNamed", ext + 1);
    std::string lower(ext);
    std::transform(lower.begin(), lower.end(), lower.begin(),
                   [](unsigned char c) { return std::tolower(c); });
    cases.push_back(
        FileCase(name, valid, kInvalid,
                 {absl::StrCat("a pickle checkpoint (", lower, ") is refused"),
                  "can execute arbitrary code"},
                 absl::StrCat("pytorch_model", ext)));
  }
  return cases;
}

std::vector<CorpusCase> IndexCases() {
  std::vector<CorpusCase> cases;
  const std::string s1 = ShardName(1, 2);
  const std::string s2 = ShardName(2, 2);
  const std::string ok_map =
      absl::StrCat("\"a\": \"", s1, "\", \"b\": \"", s2, "\"");
  cases.push_back(
      DirCase("IndexInvalidJson",
              WithIndex(absl::StrCat("{\"weight_map\": {\"a\": \"", s1, "\"")),
              kInvalid, {"not valid JSON", "parse error"}));
  cases.push_back(
      DirCase("IndexEmptyFile", WithIndex(""), kInvalid, {"not valid JSON"}));
  cases.push_back(DirCase("IndexInvalidUtf8",
                          WithIndex("{\"weight_map\": {\"\xC0\xAF\": \"x\"}}"),
                          kInvalid, {"not valid UTF-8 (byte 17)"}));
  cases.push_back(DirCase("IndexNotObject", WithIndex("[]"), kInvalid,
                          {"the index must be a JSON object"}));
  cases.push_back(DirCase(
      "IndexWeightMapMissing", WithIndex(R"({"metadata": {"total_size": 6}})"),
      kInvalid, {"missing 'weight_map' object (tensor name -> shard file)"}));
  cases.push_back(
      DirCase("IndexWeightMapNotObject",
              WithIndex(absl::StrCat("{\"weight_map\": [\"", s1, "\"]}")),
              kInvalid, {"missing 'weight_map' object"}));
  cases.push_back(DirCase("IndexWeightMapValueNotString",
                          WithIndex(R"({"weight_map": {"a": 1}})"), kInvalid,
                          {"weight_map['a'] must be a string"}));
  cases.push_back(DirCase(
      "IndexShardNameWithSlash",
      WithIndex(R"({"weight_map": {"a": "sub/model.safetensors"}})"), kInvalid,
      {"weight_map['a'] = 'sub/model.safetensors' is not a plain file name in "
       "the checkpoint directory"}));
  cases.push_back(DirCase("IndexShardNameDotDot",
                          WithIndex(R"({"weight_map": {"a": ".."}})"), kInvalid,
                          {"weight_map['a'] = '..' is not a plain file name"}));
  cases.push_back(DirCase(
      "IndexShardNameParentPath",
      WithIndex(R"({"weight_map": {"a": "../outside.safetensors"}})"), kInvalid,
      {"weight_map['a'] = '../outside.safetensors' is not a plain file name"}));
  cases.push_back(
      DirCase("IndexShardNameAbsolute",
              WithIndex(R"({"weight_map": {"a": "/etc/passwd"}})"), kInvalid,
              {"weight_map['a'] = '/etc/passwd' is not a plain file name"}));
  cases.push_back(DirCase(
      "IndexShardNameBackslash",
      WithIndex(R"({"weight_map": {"a": "..\\x.safetensors"}})"), kInvalid,
      {"weight_map['a'] = '..\\x.safetensors' is not a plain file name"}));
  cases.push_back(DirCase("IndexShardNameEmpty",
                          WithIndex(R"({"weight_map": {"a": ""}})"), kInvalid,
                          {"weight_map['a'] = '' is not a plain file name"}));
  cases.push_back(DirCase(
      "IndexShardMissingOnDisk",
      WithIndex(absl::StrCat("{\"weight_map\": {\"a\": \"", s1,
                             "\", \"b\": \"gone.safetensors\"}}")),
      absl::StatusCode::kNotFound,
      {"shard 'gone.safetensors' named in weight_map (e.g. for 'b') does not "
       "exist"}));
  cases.push_back(DirCase(
      "IndexTensorMissingFromShard",
      WithIndex(IndexJson(absl::StrCat(ok_map, ", \"c\": \"", s2, "\""))),
      kInvalid,
      {absl::StrCat("weight_map names tensor 'c' in shard '", s2,
                    "' but that shard does not hold it")}));
  cases.push_back(DirCase(
      "IndexTensorInWrongShard",
      [s1, s2](const TempDir& dir) {
        WriteShardedCheckpoint(dir.path(),
                               {{Raw("a", 4), Raw("c", 1)}, {Raw("b", 2)}});
        const std::string path = dir.Join(kIndexFileName);
        WriteFileOrDie(
            path, IndexJson(absl::StrCat("\"a\": \"", s1, "\", \"b\": \"", s2,
                                         "\", \"c\": \"", s2, "\"")));
        return path;
      },
      kInvalid,
      {absl::StrCat("weight_map names tensor 'c' in shard '", s2,
                    "' but that shard does not hold it")}));
  cases.push_back(DirCase(
      "ShardTensorNotInIndex",
      [s1, s2](const TempDir& dir) {
        WriteShardedCheckpoint(dir.path(),
                               {{Raw("a", 4), Raw("extra", 1)}, {Raw("b", 2)}});
        const std::string path = dir.Join(kIndexFileName);
        WriteFileOrDie(path, IndexJson(absl::StrCat(
                                 "\"a\": \"", s1, "\", \"b\": \"", s2, "\"")));
        return path;
      },
      kInvalid,
      {absl::StrCat("shard '", s1,
                    "' holds tensor 'extra' which weight_map does not list")}));
  cases.push_back(DirCase(
      "TensorInTwoShards",
      [s1, s2](const TempDir& dir) {
        WriteShardedCheckpoint(dir.path(),
                               {{Raw("a", 4)}, {Raw("a", 4), Raw("b", 2)}});
        const std::string path = dir.Join(kIndexFileName);
        WriteFileOrDie(path, IndexJson(absl::StrCat(
                                 "\"a\": \"", s1, "\", \"b\": \"", s2, "\"")));
        return path;
      },
      kInvalid,
      {absl::StrCat("tensor 'a' is stored in two shards, '", s1, "' and '", s2,
                    "'")}));
  cases.push_back(DirCase(
      "IndexDuplicateKeyInWeightMap",
      WithIndex(IndexJson(absl::StrCat(ok_map, ", \"a\": \"", s1, "\""))),
      kInvalid, {"duplicate JSON key 'a'"}));
  cases.push_back(DirCase("IndexDuplicateWeightMap",
                          WithIndex(absl::StrCat("{\"weight_map\": {", ok_map,
                                                 "}, \"weight_map\": {}}")),
                          kInvalid, {"duplicate JSON key 'weight_map'"}));
  cases.push_back(
      DirCase("IndexMetadataNotObject",
              WithIndex(absl::StrCat("{\"metadata\": 6, \"weight_map\": {",
                                     ok_map, "}}")),
              kInvalid, {"'metadata' must be an object"}));
  cases.push_back(
      DirCase("IndexTotalSizeNegative",
              WithIndex(absl::StrCat("{\"metadata\": {\"total_size\": -6}, "
                                     "\"weight_map\": {",
                                     ok_map, "}}")),
              kInvalid, {"metadata.total_size is negative"}));
  cases.push_back(DirCase(
      "IndexTotalSizeString",
      WithIndex(absl::StrCat("{\"metadata\": {\"total_size\": \"6\"}, "
                             "\"weight_map\": {",
                             ok_map, "}}")),
      kInvalid, {"metadata.total_size must be a non-negative integer"}));
  cases.push_back(DirCase(
      "IndexNamesPickleShard",
      [](const TempDir& dir) {
        WriteFileOrDie(dir.Join(kIndexFileName),
                       R"({"weight_map": {"a": "pytorch_model-00001.bin"}})");
        return dir.Join("pytorch_model-00001.bin");
      },
      kInvalid, {"a pickle checkpoint (.bin) is refused"}));
  cases.push_back(DirCase(
      "IndexShardWithCorruptHeader",
      [s1, s2](const TempDir& dir) {
        WriteShardedCheckpoint(dir.path(), {{Raw("a", 4)}, {Raw("b", 2)}});
        // Shard 2 claims 4 bytes for "b" while holding 2.
        WriteFileOrDie(dir.Join(s2), File(One("b", "U8", "4", "0,4"), 2));
        return dir.Join(s2);
      },
      kInvalid,
      {"tensor 'b': data_offsets [0, 4] extend past the end of the data "
       "section (2 bytes)"}));
  return cases;
}

// Positive controls: the harness accepts what it should.
std::vector<CorpusCase> PositiveControls() {
  std::vector<CorpusCase> cases;
  {
    // Zero-size tensors sharing offsets (at 0, in the middle, at the end),
    // metadata, and 8 bytes of space padding.
    std::string header =
        R"({"__metadata__":{"format":"pt","note":"caf\u00e9 \"quoted\""},)"
        R"("e0":{"dtype":"F32","shape":[0],"data_offsets":[0,0]},)"
        R"("e1":{"dtype":"I64","shape":[3,0,2],"data_offsets":[0,0]},)"
        R"("w":{"dtype":"F16","shape":[2],"data_offsets":[0,4]},)"
        R"("e2":{"dtype":"BF16","shape":[0],"data_offsets":[4,4]},)"
        R"("v":{"dtype":"U8","shape":[2],"data_offsets":[4,6]},)"
        R"("e3":{"dtype":"BOOL","shape":[0],"data_offsets":[6,6]}})";
    header += Spaces(8);
    CorpusCase c = FileCase("ControlZeroSizeSharedOffsetsMetadataPadding",
                            File(header, 6), absl::StatusCode::kOk, {});
    c.verify = [](const SafetensorsFile& f) {
      const SafetensorsHeader& h = f.header();
      ASSERT_EQ(h.tensors.size(), 6u);
      EXPECT_EQ(h.tensors[0].name, "e0");
      EXPECT_EQ(h.tensors[5].name, "w");
      ASSERT_NE(h.Find("e1"), nullptr);
      EXPECT_EQ(h.Find("e1")->numel, 0);
      EXPECT_EQ(h.Find("e3")->begin, 6u);
      EXPECT_EQ(h.Find("v")->nbytes(), 2u);
      EXPECT_TRUE(h.has_metadata);
      EXPECT_EQ(h.metadata.at("note"), "caf\xC3\xA9 \"quoted\"");
      EXPECT_EQ(h.data_size, 6u);
    };
    cases.push_back(std::move(c));
  }
  {
    CorpusCase c = FileCase("ControlEmptyHeaderNoData", File("{}"),
                            absl::StatusCode::kOk, {});
    c.verify = [](const SafetensorsFile& f) {
      EXPECT_TRUE(f.header().tensors.empty());
      EXPECT_FALSE(f.header().has_metadata);
      EXPECT_EQ(f.file_size(), 10u);
    };
    cases.push_back(std::move(c));
  }
  {
    // All 15 dtypes, 3 elements each.
    const std::vector<std::pair<std::string, size_t>> dtypes = {
        {"BOOL", 1},    {"U8", 1},  {"I8", 1},   {"I16", 2}, {"U16", 2},
        {"I32", 4},     {"U32", 4}, {"I64", 8},  {"U64", 8}, {"F8_E4M3", 1},
        {"F8_E5M2", 1}, {"F16", 2}, {"BF16", 2}, {"F32", 4}, {"F64", 8}};
    std::string header = "{";
    uint64_t offset = 0;
    for (const auto& [dtype, size] : dtypes) {
      absl::StrAppend(&header, offset ? "," : "", "\"t_", dtype,
                      "\":{\"dtype\":\"", dtype,
                      "\",\"shape\":[3],\"data_offsets\":[", offset, ",",
                      offset + 3 * size, "]}");
      offset += 3 * size;
    }
    header += "}";
    CorpusCase c = FileCase("ControlAll15Dtypes", File(header, offset),
                            absl::StatusCode::kOk, {});
    c.verify = [dtypes](const SafetensorsFile& f) {
      ASSERT_EQ(f.header().tensors.size(), 15u);
      for (const auto& [dtype, size] : dtypes) {
        const TensorEntry* e = f.header().Find("t_" + dtype);
        ASSERT_NE(e, nullptr) << dtype;
        EXPECT_EQ(DTypeName(e->dtype), dtype);
        EXPECT_EQ(e->nbytes(), 3 * size) << dtype;
      }
    };
    cases.push_back(std::move(c));
  }
  {
    std::vector<std::string> ones(64, "1");
    cases.push_back(
        FileCase("ControlRank64",
                 File(One("w", "U8", absl::StrJoin(ones, ","), "0,1"), 1),
                 absl::StatusCode::kOk, {}));
  }
  cases.push_back(FileCase(
      "ControlJsonWhitespaceInsideObject",
      File("{ \"w\" :\t{\n\"dtype\" : \"F32\" , \"shape\" : [ 1 ] ,\r\n"
           "\"data_offsets\" : [ 0 , 4 ] } }    ",
           4),
      absl::StatusCode::kOk, {}));
  cases.push_back(
      FileCase("ControlHugeZeroSizeDims",
               File(One("w", "F64", "9223372036854775807,0", "0,0")),
               absl::StatusCode::kOk, {}));
  cases.push_back(DirCase(
      "ControlShardedCheckpoint",
      [](const TempDir& dir) {
        WriteShardedCheckpoint(dir.path(), {{Raw("a", 4)}, {Raw("b", 2)}});
        return dir.Join(kIndexFileName);
      },
      absl::StatusCode::kOk, {}));
  return cases;
}

// Large but well-formed-looking headers that fail only at the end (or not at
// all). Memory here is proportional to the header, not to any size the
// input claims, but the parsed structures are bigger than their JSON text:
// a std::map node per metadata key (~11x a short `"k":"",` entry), a
// TensorEntry per tensor (~3.5x), and nlohmann's lexer keeps two growing
// copies of the current token (~4x for one long string), on top of the
// header string itself. These cases are therefore held to
// kLargeHeaderAmplification x input size + slack instead of input size +
// slack; the rest of the corpus meets the tighter bound.
constexpr int64_t kLargeHeaderAmplification = 16;

// {"<key>":"",...} with the shortest unique keys.
std::string ShortKey(size_t i) {
  static constexpr absl::string_view kAlphabet =
      "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
  std::string key;
  do {
    key += kAlphabet[i % kAlphabet.size()];
    i /= kAlphabet.size();
  } while (i != 0);
  return key;
}

// `count` one-byte U8 tensors laid out back to back.
std::string ManyTensors(size_t count, size_t extra_data) {
  std::string header = "{";
  for (size_t i = 0; i < count; ++i) {
    absl::StrAppend(&header, i ? "," : "", "\"", ShortKey(i),
                    "\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[", i,
                    ",", i + 1, "]}");
  }
  header += "}";
  return File(header, count + extra_data);
}

std::vector<CorpusCase> LargeHeaderCases() {
  std::vector<CorpusCase> cases;
  auto large = [&](CorpusCase c) {
    c.amplification = kLargeHeaderAmplification;
    cases.push_back(std::move(c));
  };
  large(FileCase("LargeHeaderManyTensorsValid", ManyTensors(20000, 0),
                 absl::StatusCode::kOk, {}));
  large(FileCase("LargeHeaderManyTensorsThenTrailingByte",
                 ManyTensors(20000, 1), kInvalid,
                 {"tensors cover 20000 bytes but the data section has 20001 "
                  "(1 trailing bytes)"}));
  std::string meta = R"({"__metadata__":{)";
  for (size_t i = 0; i < 60000; ++i) {
    absl::StrAppend(&meta, i ? "," : "", "\"", ShortKey(i), "\":\"\"");
  }
  meta += "}}";
  large(
      FileCase("LargeHeaderTooManyMetadataKeys", File(meta, 1), kInvalid,
               {"safetensors header __metadata__ has more than 1024 entries"}));
  large(FileCase("LargeHeaderOneMegabyteMetadataValue",
                 File(absl::StrCat(R"({"__metadata__":{"k":")",
                                   std::string(1 << 20, 'v'), R"("}})"),
                      1),
                 kInvalid,
                 {"tensors cover 0 bytes but the data section has 1"}));
  // Names are capped (kMaxTensorNameBytes), and echoed bounded.
  large(FileCase("LargeHeaderOneMegabyteTensorName",
                 File(One(std::string(1 << 20, 'n'), "F32", "1", "0,1"), 1),
                 kInvalid,
                 {"the name is longer than the limit of 65536 bytes",
                  "... (1048576 bytes)"}));
  large(FileCase(
      "LargeHeaderSixtyKilobyteTensorNameThenMismatch",
      File(One(std::string(60000, 'n'), "F32", "1", "0,1"), 1), kInvalid,
      {"of F32 needs 4 bytes but data_offsets [0, 1]", "... (60000 bytes)"}));
  return cases;
}

std::vector<CorpusCase> Corpus() {
  std::vector<CorpusCase> all;
  for (auto* group : {&LengthPrefixCases, &JsonSyntaxCases, &Utf8Cases,
                      &StructureCases, &FieldCases, &OffsetCases, &PickleCases,
                      &IndexCases, &PositiveControls, &LargeHeaderCases}) {
    for (CorpusCase& c : (*group)()) all.push_back(std::move(c));
  }
  return all;
}

// Total bytes of the regular files under `dir` (one level).
uint64_t InputSize(const std::string& dir) {
  uint64_t total = 0;
  absl::StatusOr<std::vector<std::string>> names = ListDirectory(dir);
  if (!names.ok()) return 0;
  for (const std::string& n : *names) {
    struct stat st;
    if (::stat(JoinPath(dir, n).c_str(), &st) == 0 && S_ISREG(st.st_mode)) {
      total += static_cast<uint64_t>(st.st_size);
    }
  }
  return total;
}

// ---------------------------------------------------------------------------
// The harness.

struct Observed {
  std::string name;
  uint64_t input_size;
  int64_t peak;
  bool prefix_only;
  int64_t amplification;
};

class MalformedCorpusTest : public ::testing::TestWithParam<CorpusCase> {
 public:
  // One summary line: the worst cases against each bound.
  static void TearDownTestSuite() {
    int64_t max_prefix_only = 0;
    int64_t max_over = INT64_MIN;  // peak - input, tight-bound cases
    std::string max_over_name;
    double max_ratio = 0;  // peak / input, large-header cases
    std::string max_ratio_name;
    for (const Observed& o : observed()) {
      const int64_t input = static_cast<int64_t>(o.input_size);
      if (o.prefix_only) max_prefix_only = std::max(max_prefix_only, o.peak);
      if (o.amplification == 1 && o.peak - input > max_over) {
        max_over = o.peak - input;
        max_over_name = o.name;
      }
      if (o.amplification > 1 &&
          static_cast<double>(o.peak) / input > max_ratio) {
        max_ratio = static_cast<double>(o.peak) / input;
        max_ratio_name = o.name;
      }
    }
    std::cout << "[ corpus   ] " << observed().size() << " cases, slack "
              << kAllocationSlack << " B. Max peak - input size: " << max_over
              << " B (" << max_over_name
              << "); max peak for a length-prefix rejection: "
              << max_prefix_only
              << " B; max peak / input for large headers: " << max_ratio << " ("
              << max_ratio_name << ")\n";
  }

 protected:
  static std::vector<Observed>& observed() {
    static auto* v = new std::vector<Observed>();
    return *v;
  }
};

TEST_P(MalformedCorpusTest, FailsWithNamedRuleWithinMemoryBound) {
  const CorpusCase& c = GetParam();
  TempDir dir;
  const Built built = c.build(dir);
  const uint64_t input_size = InputSize(dir.path());

  absl::Status status;
  int64_t peak = 0;
  if (built.checkpoint) {
    AllocationProbe probe;
    absl::StatusOr<std::unique_ptr<Checkpoint>> ckpt =
        Checkpoint::Open(built.open_path);
    status = ckpt.status();
    peak = probe.Stop();
  } else {
    AllocationProbe probe;
    absl::StatusOr<std::unique_ptr<SafetensorsFile>> file =
        SafetensorsFile::Open(built.open_path);
    peak = probe.Stop();
    status = file.status();
    if (file.ok() && c.verify) c.verify(**file);
  }
  observed().push_back(
      {c.name, input_size, peak, c.prefix_only, c.amplification});

  EXPECT_EQ(status.code(), c.code) << status;
  if (c.code != absl::StatusCode::kOk) {
    EXPECT_TRUE(absl::StrContains(status.message(), built.named_path))
        << "message does not name " << built.named_path << ": " << status;
    for (const std::string& s : c.substrings) {
      EXPECT_TRUE(absl::StrContains(status.message(), s))
          << "message lacks \"" << s << "\": " << status;
    }
  }

  EXPECT_GE(peak, 0);
  EXPECT_LE(peak, c.amplification * static_cast<int64_t>(input_size) +
                      kAllocationSlack)
      << "Open() held " << peak << " heap bytes for a " << input_size
      << "-byte input";
  if (c.prefix_only) {
    EXPECT_LE(peak, kAllocationSlack)
        << "rejected from the length prefix, yet Open() held " << peak
        << " heap bytes";
  }
}

INSTANTIATE_TEST_SUITE_P(Corpus, MalformedCorpusTest,
                         ::testing::ValuesIn(Corpus()),
                         [](const ::testing::TestParamInfo<CorpusCase>& info) {
                           return info.param.name;
                         });

TEST(MalformedCorpusMetaTest, CorpusIsLargeAndNamesAreUnique) {
  const std::vector<CorpusCase> corpus = Corpus();
  size_t negatives = 0;
  std::set<std::string> names;
  for (const CorpusCase& c : corpus) {
    EXPECT_TRUE(names.insert(c.name).second) << "duplicate case " << c.name;
    if (c.code != absl::StatusCode::kOk) {
      ++negatives;
      EXPECT_FALSE(c.substrings.empty()) << c.name;
    }
  }
  EXPECT_GE(negatives, 35u);
}

// The probe itself sees allocations made while it runs (and not those freed
// before it started), so a passing bound means something.
TEST(MalformedCorpusMetaTest, AllocationProbeSeesPeakNotFinal) {
  AllocationProbe probe;
  {
    std::vector<char> big(1 << 20);
    big[12345] = 1;
    auto* aligned = new (std::align_val_t{256}) double[1024];
    aligned[1] = 2;
    ::operator delete[](aligned, std::align_val_t{256});
  }
  const int64_t peak = probe.Stop();
  EXPECT_GE(peak, 1 << 20);
  EXPECT_LT(peak, (1 << 20) + kAllocationSlack);
}

}  // namespace
}  // namespace tailor
