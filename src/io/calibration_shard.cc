#include "io/calibration_shard.h"

#include <algorithm>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "nlohmann/json.hpp"
#include "util/json_util.h"
#include "util/status_macros.h"

namespace tailor {
namespace {

bool IsSha256Hex(const nlohmann::json& v) {
  if (!v.is_string()) return false;
  const std::string& s = v.get_ref<const std::string&>();
  return s.size() == 64 && std::all_of(s.begin(), s.end(), [](char c) {
           return absl::ascii_isdigit(c) || (c >= 'a' && c <= 'f');
         });
}

}  // namespace

std::string CalibrationShardJson(const CalibrationShard& shard) {
  return nlohmann::json{{"index", shard.index},
                        {"count", shard.count},
                        {"windows", shard.windows},
                        {"model", shard.model},
                        {"data", shard.data}}
      .dump();
}

absl::StatusOr<CalibrationShard> ParseCalibrationShard(
    absl::string_view text, absl::string_view label) {
  const std::string where = absl::StrCat(label, ": __metadata__ shard");
  TAILOR_ASSIGN_OR_RETURN(nlohmann::json j, ParseJsonStrict(text, where));
  auto bad = [&](absl::string_view rule) {
    return absl::InvalidArgumentError(absl::StrCat(where, ": ", rule));
  };
  if (!j.is_object()) return bad("must be a JSON object");
  for (const char* key : {"index", "count", "windows"}) {
    if (!j.contains(key) || !j[key].is_number_integer()) {
      return bad(absl::StrCat("'", key, "' must be an integer"));
    }
  }
  for (const char* key : {"model", "data"}) {
    if (!j.contains(key) || !IsSha256Hex(j[key])) {
      return bad(absl::StrCat("'", key, "' must be a sha256 (64 hex digits)"));
    }
  }
  const int64_t index = j["index"].get<int64_t>();
  const int64_t count = j["count"].get<int64_t>();
  const int64_t windows = j["windows"].get<int64_t>();
  if (count < 1 || count > 10000 || index < 0 || index >= count) {
    return bad("needs 1 <= count <= 10000 and 0 <= index < count");
  }
  if (windows < count) return bad("'windows' must be at least 'count'");
  CalibrationShard out;
  out.index = static_cast<int>(index);
  out.count = static_cast<int>(count);
  out.windows = windows;
  out.model = j["model"].get<std::string>();
  out.data = j["data"].get<std::string>();
  return out;
}

}  // namespace tailor
