#include "io/safetensors_header.h"

#include <algorithm>
#include <cstring>
#include <limits>
#include <set>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "nlohmann/json.hpp"
#include "util/json_util.h"
#include "util/quote.h"

namespace tailor {
namespace {

constexpr absl::string_view kMetadataKey = "__metadata__";

// Event-driven parse: builds TensorEntry values directly, so memory stays
// proportional to the header and any structural violation stops the parse at
// the first offending token (no DOM for hostile input).
class HeaderSax {
 public:
  using json = nlohmann::json;
  using number_integer_t = json::number_integer_t;
  using number_unsigned_t = json::number_unsigned_t;
  using number_float_t = json::number_float_t;
  using string_t = json::string_t;
  using binary_t = json::binary_t;

  HeaderSax(absl::string_view label, SafetensorsHeader* out)
      : label_(label), out_(out) {}

  const absl::Status& status() const { return status_; }
  // Byte position of a JSON syntax error (1-based, nlohmann's), or 0.
  size_t error_position() const { return error_position_; }

  bool null() { return Scalar("null"); }
  bool boolean(bool) { return Scalar("a boolean"); }
  bool number_integer(number_integer_t v) {
    if (v < 0) {
      return Fail(absl::StrCat(FieldContext(), " has negative value ", v,
                               "; it must be a non-negative integer"));
    }
    return Unsigned(static_cast<uint64_t>(v));
  }
  bool number_unsigned(number_unsigned_t v) { return Unsigned(v); }
  bool number_float(number_float_t, const string_t& text) {
    if (state_ == State::kShape || state_ == State::kOffsets) {
      return Fail(absl::StrCat(FieldContext(), " has value ", text,
                               ", which is not an integer in [0, 2^63)"));
    }
    return Scalar("a number");
  }
  bool binary(binary_t&) { return Scalar("binary data"); }

  bool string(string_t& v) {
    switch (state_) {
      case State::kMetadata: {
        if (out_->metadata.size() >= kMaxMetadataEntries) {
          return Fail(absl::StrCat("__metadata__ has more than ",
                                   kMaxMetadataEntries, " entries"));
        }
        if (!out_->metadata.emplace(key_, v).second) {
          return Fail(
              absl::StrCat("__metadata__ has duplicate key ", Quote(key_)));
        }
        return true;
      }
      case State::kTensor:
        if (field_ == Field::kDType) {
          std::optional<DType> dtype = ParseDType(v);
          if (!dtype.has_value()) {
            return Fail(absl::StrCat(
                TensorContext(), "unknown dtype ", Quote(v),
                " (known: BOOL, U8, I8, I16, U16, I32, U32, I64, U64, "
                "F8_E4M3, F8_E5M2, F16, BF16, F32, F64)"));
          }
          entry_.dtype = *dtype;
          return true;
        }
        return Scalar("a string");
      default:
        return Scalar("a string");
    }
  }

  bool start_object(std::size_t) {
    switch (state_) {
      case State::kStart:
        state_ = State::kTop;
        return true;
      case State::kTop:
        if (key_ == kMetadataKey) {
          if (out_->has_metadata) {
            return Fail("has duplicate key '__metadata__'");
          }
          out_->has_metadata = true;
          state_ = State::kMetadata;
          return true;
        }
        entry_ = TensorEntry();
        entry_.name = key_;
        seen_fields_ = 0;
        state_ = State::kTensor;
        return true;
      case State::kMetadata:
        return Fail(absl::StrCat("__metadata__ value for key ", Quote(key_),
                                 " must be a string, not an object"));
      default:
        return Scalar("an object");
    }
  }

  bool key(string_t& k) {
    switch (state_) {
      case State::kTop:
        if (k.empty()) return Fail("a tensor has an empty name");
        if (k.size() > kMaxTensorNameBytes) {
          return Fail(absl::StrCat("tensor ", Quote(k),
                                   ": the name is longer "
                                   "than the limit of ",
                                   kMaxTensorNameBytes, " bytes"));
        }
        key_ = std::move(k);
        return true;
      case State::kMetadata:
        key_ = std::move(k);
        return true;
      case State::kTensor: {
        Field f;
        if (k == "dtype") {
          f = Field::kDType;
        } else if (k == "shape") {
          f = Field::kShape;
        } else if (k == "data_offsets") {
          f = Field::kOffsets;
        } else {
          return Fail(absl::StrCat(TensorContext(), "unknown field ", Quote(k),
                                   " (allowed: dtype, shape, data_offsets)"));
        }
        const unsigned bit = 1u << static_cast<unsigned>(f);
        if (seen_fields_ & bit) {
          return Fail(
              absl::StrCat(TensorContext(), "duplicate key ", Quote(k)));
        }
        seen_fields_ |= bit;
        field_ = f;
        return true;
      }
      default:
        return Fail("internal: key outside an object");
    }
  }

  bool end_object() {
    switch (state_) {
      case State::kTop:
        state_ = State::kDone;
        return true;
      case State::kMetadata:
        state_ = State::kTop;
        return true;
      case State::kTensor:
        if (!FinishTensor()) return false;
        state_ = State::kTop;
        return true;
      default:
        return Fail("internal: unbalanced object");
    }
  }

  bool start_array(std::size_t) {
    if (state_ == State::kTensor && field_ == Field::kShape) {
      state_ = State::kShape;
      return true;
    }
    if (state_ == State::kTensor && field_ == Field::kOffsets) {
      state_ = State::kOffsets;
      offsets_count_ = 0;
      return true;
    }
    return Scalar("an array");
  }

  bool end_array() {
    if (state_ == State::kOffsets && offsets_count_ != 2) {
      return Fail(absl::StrCat(TensorContext(), "data_offsets has ",
                               offsets_count_,
                               " elements; it must be [begin, end]"));
    }
    if (state_ == State::kShape || state_ == State::kOffsets) {
      state_ = State::kTensor;
      return true;
    }
    return Fail("internal: unbalanced array");
  }

  bool parse_error(std::size_t position, const std::string&,
                   const nlohmann::detail::exception& ex) {
    // nlohmann's message already includes the line/column and the token.
    error_position_ = position;
    return Fail(
        absl::StrCat("is not valid JSON (byte ", position, "): ", ex.what()));
  }

 private:
  enum class State {
    kStart,
    kTop,
    kMetadata,
    kTensor,
    kShape,
    kOffsets,
    kDone
  };
  enum class Field { kDType = 0, kShape = 1, kOffsets = 2 };

  std::string TensorContext() const {
    return absl::StrCat("tensor ", Quote(entry_.name), ": ");
  }

  std::string FieldContext() const {
    if (state_ == State::kShape) {
      return absl::StrCat(TensorContext(), "shape dimension ",
                          entry_.shape.size());
    }
    if (state_ == State::kOffsets) {
      return absl::StrCat(TensorContext(), "data_offsets[", offsets_count_,
                          "]");
    }
    return "value";
  }

  bool Unsigned(uint64_t v) {
    if (state_ == State::kShape) {
      if (entry_.shape.size() >= kMaxTensorRank) {
        return Fail(absl::StrCat(TensorContext(), "shape has more than ",
                                 kMaxTensorRank, " dimensions"));
      }
      if (v > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) {
        return Fail(absl::StrCat(FieldContext(), " is ", v,
                                 ", which exceeds 2^63 - 1"));
      }
      entry_.shape.push_back(static_cast<int64_t>(v));
      return true;
    }
    if (state_ == State::kOffsets) {
      if (offsets_count_ >= 2) {
        return Fail(absl::StrCat(TensorContext(),
                                 "data_offsets has more than 2 elements; it "
                                 "must be [begin, end]"));
      }
      (offsets_count_ == 0 ? entry_.begin : entry_.end) = v;
      ++offsets_count_;
      return true;
    }
    return Scalar("a number");
  }

  // A value of the wrong kind where the current state expects something else.
  bool Scalar(absl::string_view what) {
    switch (state_) {
      case State::kStart:
        return Fail(absl::StrCat("is ", what, ", not a JSON object"));
      case State::kTop:
        return Fail(absl::StrCat("value of key ", Quote(key_), " is ", what,
                                 "; it must be an object"));
      case State::kMetadata:
        return Fail(absl::StrCat("__metadata__ value for key ", Quote(key_),
                                 " must be a string, not ", what));
      case State::kTensor:
        switch (field_) {
          case Field::kDType:
            return Fail(absl::StrCat(TensorContext(), "dtype is ", what,
                                     "; it must be a string"));
          case Field::kShape:
            return Fail(absl::StrCat(TensorContext(), "shape is ", what,
                                     "; it must be an array of integers"));
          case Field::kOffsets:
            return Fail(absl::StrCat(TensorContext(), "data_offsets is ", what,
                                     "; it must be [begin, end]"));
        }
        break;
      case State::kShape:
      case State::kOffsets:
        return Fail(absl::StrCat(FieldContext(), " is ", what,
                                 "; it must be a non-negative integer"));
      case State::kDone:
        break;
    }
    return Fail(absl::StrCat("unexpected ", what));
  }

  bool FinishTensor() {
    constexpr unsigned kAll = 0b111;
    if (seen_fields_ != kAll) {
      std::string missing;
      const char* names[] = {"dtype", "shape", "data_offsets"};
      for (unsigned i = 0; i < 3; ++i) {
        if (!(seen_fields_ & (1u << i))) {
          absl::StrAppend(&missing, missing.empty() ? "" : ", ", names[i]);
        }
      }
      return Fail(
          absl::StrCat(TensorContext(), "missing required field(s) ", missing));
    }
    if (entry_.begin > entry_.end) {
      return Fail(absl::StrCat(TensorContext(), "data_offsets [", entry_.begin,
                               ", ", entry_.end, "] have begin > end"));
    }
    uint64_t numel = 1;
    for (int64_t d : entry_.shape) {
      if (__builtin_mul_overflow(numel, static_cast<uint64_t>(d), &numel) ||
          numel > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) {
        return Fail(absl::StrCat(TensorContext(), "shape ", ShapeText(),
                                 " has more than 2^63 - 1 elements"));
      }
    }
    uint64_t nbytes = 0;
    if (__builtin_mul_overflow(numel, DTypeSize(entry_.dtype), &nbytes)) {
      return Fail(absl::StrCat(TensorContext(), "shape ", ShapeText(), " x ",
                               DTypeName(entry_.dtype),
                               " overflows a 64-bit byte count"));
    }
    if (nbytes != entry_.end - entry_.begin) {
      return Fail(absl::StrCat(TensorContext(), "shape ", ShapeText(), " of ",
                               DTypeName(entry_.dtype), " needs ", nbytes,
                               " bytes but data_offsets [", entry_.begin, ", ",
                               entry_.end, "] span ",
                               entry_.end - entry_.begin));
    }
    entry_.numel = static_cast<int64_t>(numel);
    out_->tensors.push_back(std::move(entry_));
    entry_ = TensorEntry();
    return true;
  }

  std::string ShapeText() const {
    std::string s = "[";
    for (size_t i = 0; i < entry_.shape.size(); ++i) {
      absl::StrAppend(&s, i ? ", " : "", entry_.shape[i]);
    }
    return s + "]";
  }

  bool Fail(absl::string_view message) {
    if (status_.ok()) {
      status_ = absl::InvalidArgumentError(
          absl::StrCat(label_, ": safetensors header ", message));
    }
    return false;
  }

  absl::string_view label_;
  SafetensorsHeader* out_;
  absl::Status status_;
  State state_ = State::kStart;
  std::string key_;
  TensorEntry entry_;
  Field field_ = Field::kDType;
  unsigned seen_fields_ = 0;
  int offsets_count_ = 0;
  size_t error_position_ = 0;
};

absl::Status HeaderError(absl::string_view label, absl::string_view message) {
  return absl::InvalidArgumentError(
      absl::StrCat(label, ": safetensors header ", message));
}

absl::Status ValidateLayout(absl::string_view label,
                            SafetensorsHeader& header) {
  std::vector<TensorEntry>& tensors = header.tensors;
  std::sort(tensors.begin(), tensors.end(),
            [](const TensorEntry& a, const TensorEntry& b) {
              return a.name < b.name;
            });
  for (size_t i = 1; i < tensors.size(); ++i) {
    if (tensors[i].name == tensors[i - 1].name) {
      return HeaderError(
          label, absl::StrCat("has duplicate key ", Quote(tensors[i].name)));
    }
  }
  std::vector<const TensorEntry*> by_offset;
  by_offset.reserve(tensors.size());
  for (const TensorEntry& t : tensors) by_offset.push_back(&t);
  std::sort(by_offset.begin(), by_offset.end(),
            [](const TensorEntry* a, const TensorEntry* b) {
              return std::tie(a->begin, a->end, a->name) <
                     std::tie(b->begin, b->end, b->name);
            });
  uint64_t covered = 0;
  const TensorEntry* previous = nullptr;
  for (const TensorEntry* t : by_offset) {
    if (t->end > header.data_size) {
      return HeaderError(
          label, absl::StrCat("tensor ", Quote(t->name), ": data_offsets [",
                              t->begin, ", ", t->end,
                              "] extend past the end of the data section (",
                              header.data_size, " bytes)"));
    }
    if (t->begin < covered) {
      return HeaderError(
          label,
          absl::StrCat("tensor ", Quote(t->name), ": data_offsets [", t->begin,
                       ", ", t->end, "] overlap tensor ", Quote(previous->name),
                       " which ends at ", covered));
    }
    if (t->begin > covered) {
      return HeaderError(
          label, absl::StrCat("tensor ", Quote(t->name), ": data_offsets [",
                              t->begin, ", ", t->end, "] leave a hole of ",
                              t->begin - covered, " bytes after offset ",
                              covered, " (tensors must be contiguous)"));
    }
    covered = t->end;
    previous = t;
  }
  if (covered != header.data_size) {
    return HeaderError(
        label,
        absl::StrCat("tensors cover ", covered,
                     " bytes but the data section has ", header.data_size, " (",
                     header.data_size - covered, " trailing bytes)"));
  }
  return absl::OkStatus();
}

}  // namespace

const TensorEntry* SafetensorsHeader::Find(absl::string_view name) const {
  auto it = std::lower_bound(
      tensors.begin(), tensors.end(), name,
      [](const TensorEntry& e, absl::string_view n) { return e.name < n; });
  if (it == tensors.end() || it->name != name) return nullptr;
  return &*it;
}

absl::StatusOr<uint64_t> ParseSafetensorsHeaderLength(absl::string_view prefix,
                                                      uint64_t file_size,
                                                      absl::string_view label) {
  if (file_size < 8 || prefix.size() < 8) {
    return absl::InvalidArgumentError(
        absl::StrCat(label, ": not a safetensors file: ", file_size,
                     " bytes is shorter than the 8-byte header length prefix"));
  }
  uint64_t n = 0;
  for (int i = 7; i >= 0; --i) {
    n = (n << 8) | static_cast<uint8_t>(prefix[i]);
  }
  // The length comes from the file's first 8 bytes, which for a file that is
  // not safetensors are arbitrary (possibly secret) data: name the bound it
  // breaks and the file's own size, never the value itself.
  if (n > kMaxSafetensorsHeaderSize) {
    return absl::InvalidArgumentError(absl::StrCat(
        label,
        ": not a safetensors file: the header length field (the first 8 "
        "bytes) exceeds the limit of ",
        kMaxSafetensorsHeaderSize, " bytes (the file has ", file_size,
        " bytes)"));
  }
  if (n > file_size - 8) {
    return absl::InvalidArgumentError(absl::StrCat(
        label,
        ": not a safetensors file, or truncated: the header length field (the "
        "first 8 bytes) exceeds the file size minus the 8-byte prefix (",
        file_size - 8, ")"));
  }
  return n;
}

absl::StatusOr<SafetensorsHeader> ParseSafetensorsHeaderJson(
    absl::string_view json, uint64_t data_size, absl::string_view label) {
  if (size_t bad = FindInvalidUtf8(json); bad != absl::string_view::npos) {
    return HeaderError(label,
                       absl::StrCat("is not valid UTF-8 (byte ", bad, ")"));
  }
  if (json.empty() || json.front() != '{') {
    return HeaderError(label, "does not begin with '{'");
  }
  absl::string_view trimmed = json;
  while (!trimmed.empty() && trimmed.back() == ' ') trimmed.remove_suffix(1);
  SafetensorsHeader header;
  header.header_size = json.size();
  header.data_size = data_size;
  HeaderSax sax(label, &header);
  const bool ok =
      nlohmann::json::sax_parse(trimmed.begin(), trimmed.end(), &sax,
                                nlohmann::json::input_format_t::json,
                                /*strict=*/true);
  if (trimmed.back() != '}') {
    // Either the object never closes (truncated) or something follows it.
    if (!ok && sax.error_position() >= trimmed.size()) {
      return HeaderError(label,
                         absl::StrCat("is truncated: the JSON object is not "
                                      "closed before the end of the ",
                                      json.size(), "-byte header"));
    }
    return HeaderError(label,
                       "has bytes after the JSON object; only space (0x20) "
                       "padding may follow it");
  }
  if (!sax.status().ok()) return sax.status();
  if (!ok) return HeaderError(label, "is not valid JSON");
  if (absl::Status s = ValidateLayout(label, header); !s.ok()) return s;
  return header;
}

std::string SerializeSafetensorsHead(
    const std::map<std::string, std::string>& metadata,
    const std::vector<TensorEntry>& tensors) {
  // Written by hand (not through a JSON object) to fix the key order.
  std::string header = "{";
  if (!metadata.empty()) {
    header += "\"__metadata__\":";
    header += nlohmann::json(metadata).dump();
  }
  for (const TensorEntry& t : tensors) {
    absl::StrAppend(&header, header.size() > 1 ? "," : "",
                    nlohmann::json(t.name).dump(), ":{\"dtype\":\"",
                    DTypeName(t.dtype),
                    "\",\"shape\":", nlohmann::json(t.shape).dump(),
                    ",\"data_offsets\":[", t.begin, ",", t.end, "]}");
  }
  header += "}";
  header.append((8 - header.size() % 8) % 8, ' ');
  std::string head(8, '\0');
  for (int i = 0; i < 8; ++i) {
    head[i] = static_cast<char>((header.size() >> (8 * i)) & 0xff);
  }
  return head + header;
}

absl::StatusOr<SafetensorsHeader> ParseSafetensorsBytes(
    absl::string_view bytes, absl::string_view label) {
  absl::StatusOr<uint64_t> n =
      ParseSafetensorsHeaderLength(bytes, bytes.size(), label);
  if (!n.ok()) return n.status();
  return ParseSafetensorsHeaderJson(bytes.substr(8, *n), bytes.size() - 8 - *n,
                                    label);
}

}  // namespace tailor
