#include "api/spec_convert.h"

#include <cstdint>
#include <string>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_replace.h"
#include "google/protobuf/descriptor.h"
#include "google/protobuf/message.h"
#include "util/quote.h"

namespace tailor::api {
namespace {

using ::google::protobuf::Descriptor;
using ::google::protobuf::EnumDescriptor;
using ::google::protobuf::EnumValueDescriptor;
using ::google::protobuf::FieldDescriptor;
using ::google::protobuf::Message;
using ::google::protobuf::Reflection;

// METHOD_TASK_ARITHMETIC -> "task_arithmetic" for field `method`.
std::string EnumPrefix(const FieldDescriptor* f) {
  return absl::AsciiStrToUpper(f->name()) + "_";
}

nlohmann::json ToJson(const Message& m) {
  nlohmann::json j = nlohmann::json::object();
  const Descriptor* d = m.GetDescriptor();
  const Reflection* r = m.GetReflection();
  for (int i = 0; i < d->field_count(); ++i) {
    const FieldDescriptor* f = d->field(i);
    if (f->is_repeated()) {
      nlohmann::json list = nlohmann::json::array();
      for (int k = 0; k < r->FieldSize(m, f); ++k) {
        if (f->cpp_type() == FieldDescriptor::CPPTYPE_MESSAGE) {
          list.push_back(ToJson(r->GetRepeatedMessage(m, f, k)));
        } else if (f->cpp_type() == FieldDescriptor::CPPTYPE_DOUBLE) {
          list.push_back(r->GetRepeatedDouble(m, f, k));
        } else {
          list.push_back(r->GetRepeatedString(m, f, k));
        }
      }
      if (!list.empty()) j[f->name()] = list;
      continue;
    }
    if (f->has_presence() && !r->HasField(m, f)) continue;
    switch (f->cpp_type()) {
      case FieldDescriptor::CPPTYPE_STRING: {
        std::string v = r->GetString(m, f);
        if (!v.empty()) j[f->name()] = v;
        break;
      }
      case FieldDescriptor::CPPTYPE_DOUBLE:
        j[f->name()] = r->GetDouble(m, f);
        break;
      case FieldDescriptor::CPPTYPE_INT64:
        j[f->name()] = r->GetInt64(m, f);
        break;
      case FieldDescriptor::CPPTYPE_UINT64:
        j[f->name()] = r->GetUInt64(m, f);
        break;
      case FieldDescriptor::CPPTYPE_INT32:
        j[f->name()] = r->GetInt32(m, f);
        break;
      case FieldDescriptor::CPPTYPE_BOOL:
        j[f->name()] = r->GetBool(m, f);
        break;
      case FieldDescriptor::CPPTYPE_MESSAGE:
        j[f->name()] = ToJson(r->GetMessage(m, f));
        break;
      case FieldDescriptor::CPPTYPE_ENUM: {
        const EnumValueDescriptor* v = r->GetEnum(m, f);
        if (v->number() == 0) break;
        std::string name = v->name();
        const std::string prefix = EnumPrefix(f);
        if (absl::StartsWith(name, prefix)) name = name.substr(prefix.size());
        j[f->name()] = absl::AsciiStrToLower(name);
        break;
      }
      default:
        break;
    }
  }
  return j;
}

absl::Status Bad(const std::string& field, absl::string_view rule) {
  return absl::InvalidArgumentError(absl::StrCat(field, ": ", rule));
}

absl::Status FromJson(const nlohmann::json& j, const std::string& path,
                      Message* m) {
  if (!j.is_object()) {
    return Bad(path.empty() ? "spec" : path, "must be an object");
  }
  const Descriptor* d = m->GetDescriptor();
  const Reflection* r = m->GetReflection();
  for (const auto& [key, v] : j.items()) {
    const FieldDescriptor* f = d->FindFieldByName(key);
    if (f == nullptr) {
      // The key is user text: echoed bounded.
      const std::string shown = key.size() <= 40 ? key : Quote(key, 40);
      return Bad(path.empty() ? shown : absl::StrCat(path, ".", shown),
                 "unknown field");
    }
    const std::string name = path.empty() ? key : absl::StrCat(path, ".", key);
    if (v.is_null()) continue;
    if (f->is_repeated()) {
      if (!v.is_array()) return Bad(name, "must be a list");
      for (size_t k = 0; k < v.size(); ++k) {
        const std::string item = absl::StrCat(name, "[", k, "]");
        if (f->cpp_type() == FieldDescriptor::CPPTYPE_MESSAGE) {
          absl::Status s = FromJson(v[k], item, r->AddMessage(m, f));
          if (!s.ok()) return s;
        } else if (f->cpp_type() == FieldDescriptor::CPPTYPE_DOUBLE) {
          if (!v[k].is_number()) return Bad(item, "must be a number");
          r->AddDouble(m, f, v[k].get<double>());
        } else {
          if (!v[k].is_string()) return Bad(item, "must be a string");
          r->AddString(m, f, v[k].get<std::string>());
        }
      }
      continue;
    }
    switch (f->cpp_type()) {
      case FieldDescriptor::CPPTYPE_STRING:
        if (!v.is_string()) return Bad(name, "must be a string");
        r->SetString(m, f, v.get<std::string>());
        break;
      case FieldDescriptor::CPPTYPE_DOUBLE:
        if (!v.is_number()) return Bad(name, "must be a number");
        r->SetDouble(m, f, v.get<double>());
        break;
      case FieldDescriptor::CPPTYPE_INT64:
        if (!v.is_number_integer()) return Bad(name, "must be an integer");
        r->SetInt64(m, f, v.get<int64_t>());
        break;
      case FieldDescriptor::CPPTYPE_UINT64:
        if (!v.is_number_unsigned()) {
          return Bad(name, "must be a non-negative integer");
        }
        r->SetUInt64(m, f, v.get<uint64_t>());
        break;
      case FieldDescriptor::CPPTYPE_INT32:
        if (!v.is_number_integer() ||
            (v.is_number_unsigned() ? v.get<uint64_t>() > uint64_t{INT32_MAX}
                                    : v.get<int64_t>() < INT32_MIN ||
                                          v.get<int64_t>() > INT32_MAX)) {
          return Bad(name, "must be an integer in the 32-bit range");
        }
        r->SetInt32(m, f, v.get<int32_t>());
        break;
      case FieldDescriptor::CPPTYPE_BOOL:
        if (!v.is_boolean()) return Bad(name, "must be true or false");
        r->SetBool(m, f, v.get<bool>());
        break;
      case FieldDescriptor::CPPTYPE_ENUM: {
        if (!v.is_string()) return Bad(name, "must be a string");
        const EnumDescriptor* e = f->enum_type();
        // "authors-code" (a spec's spelling) is VARIANT_AUTHORS_CODE.
        const EnumValueDescriptor* ev = e->FindValueByName(absl::StrReplaceAll(
            EnumPrefix(f) + absl::AsciiStrToUpper(v.get<std::string>()),
            {{"-", "_"}}));
        if (ev == nullptr || ev->number() == 0) {
          std::string allowed;
          for (int k = 1; k < e->value_count(); ++k) {
            std::string n = e->value(k)->name().substr(EnumPrefix(f).size());
            absl::StrAppend(&allowed, k > 1 ? "|" : "",
                            absl::AsciiStrToLower(n));
          }
          return Bad(name, absl::StrCat("must be one of ", allowed, ", not ",
                                        Quote(v.get<std::string>())));
        }
        r->SetEnum(m, f, ev);
        break;
      }
      case FieldDescriptor::CPPTYPE_MESSAGE: {
        absl::Status s = FromJson(v, name, r->MutableMessage(m, f));
        if (!s.ok()) return s;
        break;
      }
      default:
        return Bad(name, "unsupported field type");
    }
  }
  return absl::OkStatus();
}

// The per-layer lists (LayerGradients): in the engine's JSON each is the
// value of its scalar's key (a number or a list), in the message a field
// of layer_gradients.
constexpr char kGradients[] = "layer_gradients";

}  // namespace

nlohmann::json SpecToJson(const tailor::v1::FusionJobSpec& spec) {
  nlohmann::json j = ToJson(spec);
  if (auto it = j.find(kGradients); it != j.end()) {
    const nlohmann::json lists = std::move(*it);
    j.erase(kGradients);
    for (const auto& [key, list] : lists.items()) j[key] = list;
  }
  return j;
}

absl::StatusOr<tailor::v1::FusionJobSpec> SpecFromJson(
    const nlohmann::json& json) {
  tailor::v1::FusionJobSpec spec;
  nlohmann::json j = json;
  if (j.is_object() && !j.contains(kGradients)) {
    const Descriptor* d = tailor::v1::LayerGradients::descriptor();
    for (int i = 0; i < d->field_count(); ++i) {
      const std::string& key = d->field(i)->name();
      if (auto it = j.find(key); it != j.end() && it->is_array()) {
        j[kGradients][key] = std::move(*it);
        j.erase(key);
      }
    }
  }
  absl::Status s = FromJson(j, "", &spec);
  if (!s.ok()) return s;
  return spec;
}

absl::Status CheckLayerGradients(const tailor::v1::FusionJobSpec& spec) {
  const Message& lists = spec.layer_gradients();
  const Descriptor* d = lists.GetDescriptor();
  for (int i = 0; i < d->field_count(); ++i) {
    const FieldDescriptor* list = d->field(i);
    if (lists.GetReflection()->FieldSize(lists, list) == 0) continue;
    const FieldDescriptor* scalar =
        spec.GetDescriptor()->FindFieldByName(list->name());
    if (scalar != nullptr && spec.GetReflection()->HasField(spec, scalar)) {
      return Bad(
          list->name(),
          absl::StrCat("give either the number ", list->name(), " or the list ",
                       kGradients, ".", list->name(), ", not both"));
    }
  }
  return absl::OkStatus();
}

}  // namespace tailor::api
