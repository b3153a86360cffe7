#include "io/peft_keys.h"

#include <algorithm>
#include <optional>
#include <set>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "util/quote.h"

namespace tailor {

absl::Status AdapterTensorError(absl::string_view file, absl::string_view key,
                                absl::string_view message) {
  return absl::InvalidArgumentError(
      absl::StrCat(file, ": tensor ", Quote(key), ": ", message));
}

absl::StatusOr<PeftKey> ParsePeftKey(absl::string_view file,
                                     absl::string_view key) {
  if (!absl::StartsWith(key, kPeftPrefix)) {
    return AdapterTensorError(
        file, key,
        absl::StrCat("not a PEFT adapter tensor (PEFT saves every "
                     "tensor under ",
                     Quote(kPeftPrefix), ")"));
  }
  const std::vector<std::string> parts =
      absl::StrSplit(key.substr(kPeftPrefix.size()), '.');
  const size_t n = parts.size();
  for (const std::string& p : parts) {
    if (p.empty())
      return AdapterTensorError(file, key, "has an empty name component");
  }
  auto join = [&](size_t end) {
    return absl::StrJoin(parts.begin(), parts.begin() + end, ".");
  };
  auto linear_factor = [](const std::string& p) -> std::optional<PeftFactor> {
    if (p == "lora_A") return PeftFactor::kA;
    if (p == "lora_B") return PeftFactor::kB;
    return std::nullopt;
  };
  auto embedding_factor =
      [](const std::string& p) -> std::optional<PeftFactor> {
    if (p == "lora_embedding_A") return PeftFactor::kA;
    if (p == "lora_embedding_B") return PeftFactor::kB;
    return std::nullopt;
  };

  PeftKey out;
  // <module>.lora_X.weight or <module>.lora_X.<adapter>.weight
  if (parts[n - 1] == "weight") {
    for (size_t at : {size_t{2}, size_t{3}}) {
      if (n > at && linear_factor(parts[n - at]).has_value()) {
        out.lora = true;
        out.factor = *linear_factor(parts[n - at]);
        out.module = join(n - at);
        return out;
      }
    }
  }
  // <module>.lora_embedding_X or <module>.lora_embedding_X.<adapter>
  for (size_t at : {size_t{1}, size_t{2}}) {
    if (n > at && embedding_factor(parts[n - at]).has_value()) {
      out.lora = true;
      out.embedding = true;
      out.factor = *embedding_factor(parts[n - at]);
      out.module = join(n - at);
      return out;
    }
  }
  // Anything else named like a LoRA parameter is a variant we do not merge.
  for (size_t at = 1; at <= std::min<size_t>(3, n); ++at) {
    const std::string& p = parts[n - at];
    if (p == "lora_B" && parts[n - 1] == "bias") {
      return AdapterTensorError(
          file, key, "a LoRA bias (lora_bias=True) is not supported");
    }
    if (p == "lora_magnitude_vector") {
      return AdapterTensorError(
          file, key,
          "a DoRA magnitude vector (use_dora=True) is not "
          "supported");
    }
    if (absl::StartsWith(p, "lora_")) {
      return AdapterTensorError(
          file, key,
          "not a recognised LoRA tensor (expected <module>.lora_A.weight, "
          "<module>.lora_B.weight, <module>.lora_embedding_A or "
          "<module>.lora_embedding_B, optionally with an adapter name before "
          "'.weight' / at the end)");
    }
  }
  // A full tensor: <module>.<param>,
  // <module>.modules_to_save.<adapter>.<param>, <module>.base_layer.<param>.
  std::vector<std::string> target;
  for (size_t i = 0; i < n; ++i) {
    if (parts[i] == "modules_to_save") {
      if (i == 0 || i + 2 >= n) {
        return AdapterTensorError(
            file, key,
            "malformed modules_to_save key (expected "
            "<module>.modules_to_save.<adapter>.<param>)");
      }
      ++i;  // skip the adapter name
      continue;
    }
    if (parts[i] == "original_module") {
      return AdapterTensorError(
          file, key,
          "the frozen original of a modules_to_save module is not "
          "an adapter tensor");
    }
    if (parts[i] == "base_layer" && i + 1 < n) continue;
    target.push_back(parts[i]);
  }
  out.target = absl::StrJoin(target, ".");
  return out;
}

std::string PeftNameMap::Apply(const std::string& name) const {
  switch (mode) {
    case kIdentity:
      return name;
    case kStrip:
      return absl::StartsWith(name, prefix) ? name.substr(prefix.size()) : name;
    case kPrepend:
      return prefix + name;
  }
  return name;
}

std::string PeftNameMap::Describe() const {
  switch (mode) {
    case kIdentity:
      return "the names as saved";
    case kStrip:
      return absl::StrCat(Quote(prefix), " stripped");
    case kPrepend:
      return absl::StrCat(Quote(prefix), " prepended");
  }
  return "";
}

absl::StatusOr<PeftNameMap> ChoosePeftNameMap(
    const TensorSource& base, const std::vector<PeftTarget>& targets,
    absl::string_view file) {
  auto resolves = [&](const PeftNameMap& map) {
    for (const PeftTarget& t : targets) {
      if (base.Find(map.Apply(t.name)) == nullptr) return false;
    }
    return true;
  };
  const PeftNameMap identity;
  const PeftTarget* missing = nullptr;
  for (const PeftTarget& t : targets) {
    if (base.Find(t.name) == nullptr) {
      missing = &t;
      break;
    }
  }
  if (missing == nullptr) return identity;

  // Candidate prefixes, derived from the first unresolved name.
  std::vector<PeftNameMap> candidates;
  const size_t dot = missing->name.find('.');
  if (dot != std::string::npos) {
    candidates.push_back(
        {PeftNameMap::kStrip, missing->name.substr(0, dot + 1)});
  }
  const std::string suffix = absl::StrCat(".", missing->name);
  for (const TensorInfo& t : base.tensors()) {
    if (t.name.size() > suffix.size() && absl::EndsWith(t.name, suffix)) {
      const std::string head = t.name.substr(0, t.name.size() - suffix.size());
      if (!absl::StrContains(head, '.')) {
        candidates.push_back({PeftNameMap::kPrepend, head + "."});
      }
    }
  }
  std::vector<PeftNameMap> valid;
  for (const PeftNameMap& c : candidates) {
    if (resolves(c)) valid.push_back(c);
  }
  if (valid.size() == 1) return valid[0];
  if (valid.size() > 1) {
    return absl::InvalidArgumentError(absl::StrCat(
        file, ": the adapter's module names do not match ", base.description(),
        " as saved, and both ", valid[0].Describe(), " and ",
        valid[1].Describe(), " would match; refusing to guess"));
  }
  // Report the first tensor that cannot be found, with the names tried.
  std::vector<std::string> tried = {absl::StrCat(Quote(missing->name))};
  std::set<std::string> seen = {missing->name};
  auto add = [&](const std::string& name) {
    if (seen.insert(name).second) tried.push_back(absl::StrCat(Quote(name)));
  };
  if (absl::StartsWith(missing->name, "model.")) {
    add(missing->name.substr(6));
  } else {
    add(absl::StrCat("model.", missing->name));
  }
  for (const PeftNameMap& c : candidates) add(c.Apply(missing->name));
  return absl::NotFoundError(absl::StrCat(
      file, ": tensor ", Quote(missing->key), ": ",
      missing->lora ? "the LoRA module's base tensor "
                    : "not a LoRA factor, so it replaces a base tensor "
                      "(modules_to_save); but ",
      absl::StrJoin(tried, " or "), " is not in ", base.description(),
      " (no consistent base-model prefix mapping resolves every adapter "
      "tensor)"));
}

}  // namespace tailor
