#include "api/wire_parse.h"

#include <map>
#include <optional>
#include <string>

#include "absl/strings/str_cat.h"
#include "google/protobuf/descriptor.h"
#include "google/protobuf/unknown_field_set.h"
#include "util/json_util.h"

namespace tailor::api {
namespace {

using ::google::protobuf::Descriptor;
using ::google::protobuf::FieldDescriptor;
using ::google::protobuf::UnknownField;
using ::google::protobuf::UnknownFieldSet;

// Nesting followed when looking for the bad field (the API's messages are a
// few levels deep; deeper input is just "cannot be parsed").
constexpr int kMaxDepth = 16;

// The path of the first string field in `bytes` (a serialized message of
// type `d`) that holds invalid UTF-8, with the offset of the bad byte inside
// the field's value; nullopt if none is found.
std::optional<std::string> FindBadString(const Descriptor* d,
                                         absl::string_view bytes,
                                         const std::string& prefix, int depth) {
  if (depth > kMaxDepth) return std::nullopt;
  UnknownFieldSet fields;
  if (!fields.ParseFromArray(bytes.data(), static_cast<int>(bytes.size()))) {
    return std::nullopt;
  }
  std::map<int, int> seen;  // field number -> occurrences so far
  for (int i = 0; i < fields.field_count(); ++i) {
    const UnknownField& u = fields.field(i);
    const int index = seen[u.number()]++;
    if (u.type() != UnknownField::TYPE_LENGTH_DELIMITED) continue;
    const FieldDescriptor* f = d->FindFieldByNumber(u.number());
    if (f == nullptr) continue;
    std::string name =
        absl::StrCat(prefix, prefix.empty() ? "" : ".", f->name());
    if (f->is_repeated()) absl::StrAppend(&name, "[", index, "]");
    const std::string& value = u.length_delimited();
    if (f->type() == FieldDescriptor::TYPE_STRING) {
      const size_t bad = FindInvalidUtf8(value);
      if (bad != absl::string_view::npos) {
        return absl::StrCat(name, ": is not valid UTF-8 (byte ", bad,
                            "); string fields must be UTF-8");
      }
    } else if (f->type() == FieldDescriptor::TYPE_MESSAGE) {
      std::optional<std::string> nested =
          FindBadString(f->message_type(), value, name, depth + 1);
      if (nested) return nested;
    }
  }
  return std::nullopt;
}

}  // namespace

absl::Status ParseMessage(absl::string_view bytes,
                          google::protobuf::Message* out) {
  out->Clear();
  if (bytes.size() <= static_cast<size_t>(INT32_MAX) &&
      out->ParseFromArray(bytes.data(), static_cast<int>(bytes.size()))) {
    return absl::OkStatus();
  }
  out->Clear();
  if (std::optional<std::string> bad =
          FindBadString(out->GetDescriptor(), bytes, "", 0)) {
    return absl::InvalidArgumentError(*bad);
  }
  return absl::InvalidArgumentError(absl::StrCat(
      "request: cannot be parsed as ", out->GetDescriptor()->full_name()));
}

}  // namespace tailor::api
