// libFuzzer target for the safetensors header parser.
//
// Feeds the input, as a whole file, to ParseSafetensorsBytes. Hostile input
// must produce an INVALID_ARGUMENT status naming the label, never a crash,
// a sanitizer report or unbounded memory (libFuzzer's -rss_limit_mb and
// -malloc_limit_mb catch the latter). When the parse succeeds, the result
// must satisfy every invariant the header documents; a violation traps.
//
// Build and run: scripts/fuzz [SECONDS].

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <string>
#include <tuple>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "absl/strings/string_view.h"
#include "io/dtype.h"
#include "io/safetensors_header.h"
#include "nlohmann/json.hpp"
#include "util/json_util.h"

namespace {

constexpr absl::string_view kLabel = "fuzz-input.safetensors";

#define FUZZ_CHECK(cond) \
  do {                   \
    if (!(cond)) {       \
      __builtin_trap();  \
    }                    \
  } while (0)

void CheckAccepted(absl::string_view bytes,
                   const tailor::SafetensorsHeader& h) {
  // Framing: prefix + header + data is the whole input.
  FUZZ_CHECK(bytes.size() >= 8);
  FUZZ_CHECK(h.header_size <= tailor::kMaxSafetensorsHeaderSize);
  FUZZ_CHECK(h.header_size <= bytes.size() - 8);
  FUZZ_CHECK(h.data_offset() == 8 + h.header_size);
  FUZZ_CHECK(h.data_offset() + h.data_size == bytes.size());

  // The header text is UTF-8, starts with '{', and after trailing spaces
  // ends with '}', and is one well-formed JSON object (checked with
  // nlohmann's own validator, independently of the SAX handler).
  absl::string_view json = bytes.substr(8, h.header_size);
  FUZZ_CHECK(tailor::FindInvalidUtf8(json) == absl::string_view::npos);
  FUZZ_CHECK(!json.empty() && json.front() == '{');
  absl::string_view trimmed = json;
  while (!trimmed.empty() && trimmed.back() == ' ') trimmed.remove_suffix(1);
  FUZZ_CHECK(!trimmed.empty() && trimmed.back() == '}');
  FUZZ_CHECK(nlohmann::json::accept(trimmed.begin(), trimmed.end()));

  if (!h.has_metadata) FUZZ_CHECK(h.metadata.empty());

  // Names: non-empty, strictly increasing (sorted, no duplicates), and
  // reachable through Find.
  for (size_t i = 0; i < h.tensors.size(); ++i) {
    const tailor::TensorEntry& t = h.tensors[i];
    FUZZ_CHECK(!t.name.empty());
    if (i > 0) FUZZ_CHECK(h.tensors[i - 1].name < t.name);
    FUZZ_CHECK(h.Find(t.name) == &t);
  }

  // Per-tensor arithmetic: rank bound, non-negative dims, numel is the
  // product of the shape, numel x itemsize == end - begin, all without
  // overflow.
  for (const tailor::TensorEntry& t : h.tensors) {
    FUZZ_CHECK(t.shape.size() <= tailor::kMaxTensorRank);
    FUZZ_CHECK(t.begin <= t.end);
    unsigned __int128 numel = 1;
    for (int64_t d : t.shape) {
      FUZZ_CHECK(d >= 0);
      numel *= static_cast<uint64_t>(d);
      if (numel == 0) break;
      FUZZ_CHECK(numel <= static_cast<unsigned __int128>(
                              std::numeric_limits<int64_t>::max()));
    }
    FUZZ_CHECK(t.numel >= 0);
    FUZZ_CHECK(static_cast<unsigned __int128>(t.numel) == numel);
    const unsigned __int128 nbytes =
        numel * static_cast<unsigned __int128>(tailor::DTypeSize(t.dtype));
    FUZZ_CHECK(nbytes == t.nbytes());
    FUZZ_CHECK(tailor::ParseDType(tailor::DTypeName(t.dtype)) == t.dtype);
  }

  // Layout: sorted by (begin, end) the ranges start at 0, are contiguous
  // (zero-size tensors may share an offset) and cover the data section.
  std::vector<const tailor::TensorEntry*> by_offset;
  for (const tailor::TensorEntry& t : h.tensors) by_offset.push_back(&t);
  std::sort(by_offset.begin(), by_offset.end(),
            [](const tailor::TensorEntry* a, const tailor::TensorEntry* b) {
              return std::tie(a->begin, a->end) < std::tie(b->begin, b->end);
            });
  uint64_t covered = 0;
  for (const tailor::TensorEntry* t : by_offset) {
    FUZZ_CHECK(t->begin == covered);
    FUZZ_CHECK(t->end <= h.data_size);
    covered = t->end;
  }
  FUZZ_CHECK(covered == h.data_size);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const absl::string_view bytes(reinterpret_cast<const char*>(data), size);
  absl::StatusOr<tailor::SafetensorsHeader> header =
      tailor::ParseSafetensorsBytes(bytes, kLabel);
  if (header.ok()) {
    CheckAccepted(bytes, *header);
  } else {
    // Every rejection is INVALID_ARGUMENT and names the input.
    FUZZ_CHECK(header.status().code() == absl::StatusCode::kInvalidArgument);
    FUZZ_CHECK(absl::StartsWith(header.status().message(), kLabel));
  }
  return 0;
}
