#include "client/inspect_command.h"

#include <algorithm>
#include <map>
#include <memory>
#include <ostream>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "client/remote_flags.h"
#include "io/checkpoint.h"
#include "io/lora_adapter.h"
#include "io/open_checkpoint.h"
#include "nlohmann/json.hpp"
#include "storage/uri_resolver.h"
#include "util/file_util.h"
#include "util/json_util.h"
#include "util/status_macros.h"

namespace tailor::cli {
namespace {

std::string ShapeText(const std::vector<int64_t>& shape) {
  return absl::StrCat("[", absl::StrJoin(shape, ", "), "]");
}

std::string HumanBytes(uint64_t bytes) {
  const char* units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  double v = static_cast<double>(bytes);
  int u = 0;
  while (v >= 1024 && u < 4) {
    v /= 1024;
    ++u;
  }
  return u == 0 ? absl::StrCat(bytes, " B")
                : absl::StrFormat("%.2f %s", v, units[u]);
}

// What we show, gathered from any kind of input.
struct View {
  std::string kind;  // "safetensors" | "lora-adapter" | "lora-merged"
  std::string path;
  bool sharded = false;
  std::vector<std::pair<std::string, uint64_t>> files;  // name, bytes
  const std::vector<TensorInfo>* tensors = nullptr;
  std::map<std::string, std::string> metadata;
  std::vector<std::string> warnings;
  nlohmann::json lora;                        // adapter summary, if any
  std::map<std::string, std::string> origin;  // tensor -> "lora"/"replaced"
};

void FillFromCheckpoint(const Checkpoint& ckpt, View* view) {
  view->sharded = ckpt.sharded();
  for (const auto& f : ckpt.files()) {
    view->files.emplace_back(Basename(f->path()), f->file_size());
  }
  if (ckpt.files().size() == 1)
    view->metadata = ckpt.files()[0]->header().metadata;
  view->warnings = ckpt.warnings();
  view->tensors = &ckpt.tensors();
}

// Reads `dir`/adapter_config.json beneath its allowed root (issue #14
// point 7: a link out of the roots is PERMISSION_DENIED naming it).
absl::StatusOr<nlohmann::json> AdapterSummary(const std::string& dir,
                                              const UriResolver& resolver) {
  const std::string path = JoinPath(dir, kAdapterConfigName);
  TAILOR_ASSIGN_OR_RETURN(const std::string canonical,
                          resolver.CheckLocalPath(path));
  TAILOR_ASSIGN_OR_RETURN(std::string text,
                          resolver.ReadFile(canonical, 1 << 20, path));
  TAILOR_ASSIGN_OR_RETURN(nlohmann::json config, ParseJsonStrict(text, path));
  nlohmann::json summary = nlohmann::json::object();
  for (const char* key : {"peft_type", "r", "lora_alpha", "target_modules",
                          "modules_to_save", "fan_in_fan_out", "use_rslora",
                          "use_dora", "base_model_name_or_path"}) {
    if (config.is_object() && config.contains(key)) summary[key] = config[key];
  }
  return summary;
}

void PrintTable(const View& view, std::ostream& out) {
  const std::vector<TensorInfo>& tensors = *view.tensors;
  const bool show_origin = !view.origin.empty();
  std::vector<std::vector<std::string>> rows;
  rows.push_back({"NAME", "DTYPE", "SHAPE", "BYTES", "FILE"});
  if (show_origin) rows[0].push_back("FROM");
  for (const TensorInfo& t : tensors) {
    std::vector<std::string> row = {t.name, std::string(DTypeName(t.dtype)),
                                    ShapeText(t.shape), absl::StrCat(t.nbytes),
                                    t.file};
    if (show_origin) {
      auto it = view.origin.find(t.name);
      row.push_back(it == view.origin.end() ? "base" : it->second);
    }
    rows.push_back(std::move(row));
  }
  std::vector<size_t> width(rows[0].size(), 0);
  for (const auto& row : rows) {
    for (size_t i = 0; i < row.size(); ++i)
      width[i] = std::max(width[i], row[i].size());
  }
  for (const auto& row : rows) {
    std::string line;
    for (size_t i = 0; i < row.size(); ++i) {
      const bool right = i == 3;  // bytes
      std::string cell = row[i];
      std::string pad(width[i] - cell.size(), ' ');
      absl::StrAppend(
          &line, i ? "  " : "",
          right ? pad + cell : cell + (i + 1 < row.size() ? pad : ""));
    }
    out << line << "\n";
  }
  uint64_t bytes = 0, params = 0;
  std::map<std::string, uint64_t> by_dtype;
  for (const TensorInfo& t : tensors) {
    bytes += t.nbytes;
    params += static_cast<uint64_t>(t.numel);
    by_dtype[std::string(DTypeName(t.dtype))] += 1;
  }
  out << "\n" << view.kind << " " << view.path << "\n";
  out << "tensors: " << tensors.size() << "  parameters: " << params
      << "  bytes: " << bytes << " (" << HumanBytes(bytes) << ")\n";
  out << "dtypes: " << absl::StrJoin(by_dtype, ", ", absl::PairFormatter("="))
      << "\n";
  out << "files: " << view.files.size()
      << (view.sharded ? " (sharded, indexed)" : "") << "\n";
  if (!view.lora.is_null()) out << "adapter: " << view.lora.dump() << "\n";
  for (const std::string& w : view.warnings) out << "warning: " << w << "\n";
}

void PrintJson(const View& view, std::ostream& out) {
  nlohmann::json j;
  j["kind"] = view.kind;
  j["path"] = view.path;
  j["sharded"] = view.sharded;
  nlohmann::json files = nlohmann::json::array();
  for (const auto& [name, size] : view.files) {
    files.push_back({{"name", name}, {"bytes", size}});
  }
  j["files"] = files;
  nlohmann::json tensors = nlohmann::json::array();
  uint64_t bytes = 0, params = 0;
  for (const TensorInfo& t : *view.tensors) {
    nlohmann::json row = {{"name", t.name},
                          {"dtype", std::string(DTypeName(t.dtype))},
                          {"shape", t.shape},
                          {"bytes", t.nbytes},
                          {"file", t.file}};
    if (!view.origin.empty()) {
      auto it = view.origin.find(t.name);
      row["from"] = it == view.origin.end() ? "base" : it->second;
    }
    tensors.push_back(std::move(row));
    bytes += t.nbytes;
    params += static_cast<uint64_t>(t.numel);
  }
  j["tensors"] = tensors;
  j["totals"] = {{"tensors", view.tensors->size()},
                 {"parameters", params},
                 {"bytes", bytes},
                 {"files", view.files.size()}};
  j["metadata"] = view.metadata;
  j["warnings"] = view.warnings;
  if (!view.lora.is_null()) j["adapter"] = view.lora;
  out << j.dump(2) << "\n";
}

}  // namespace

absl::Status RunInspect(const InspectArgs& args, std::ostream& out) {
  if (args.output != "table" && args.output != "json") {
    return absl::InvalidArgumentError(absl::StrCat(
        "--output must be 'table' or 'json', not '", args.output, "'"));
  }
  TAILOR_ASSIGN_OR_RETURN(UriResolver resolver,
                          MakeCommandResolver(args.allowed_roots, args.remote));
  return RunInspect(args, resolver, out);
}

absl::Status RunInspect(const InspectArgs& args, const UriResolver& resolver,
                        std::ostream& out) {
  if (args.output != "table" && args.output != "json") {
    return absl::InvalidArgumentError(absl::StrCat(
        "--output must be 'table' or 'json', not '", args.output, "'"));
  }
  TAILOR_ASSIGN_OR_RETURN(std::string path, resolver.ResolveExisting(args.uri));

  View view;
  view.path = path;
  std::unique_ptr<Checkpoint> base;
  std::unique_ptr<Checkpoint> adapter_file;
  std::unique_ptr<TensorSource> merged;
  if (IsLoraAdapterDir(path, resolver)) {
    TAILOR_ASSIGN_OR_RETURN(view.lora, AdapterSummary(path, resolver));
    if (args.base_uri.empty()) {
      view.kind = "lora-adapter";
      Checkpoint::Options options;
      options.resolver = &resolver;
      TAILOR_ASSIGN_OR_RETURN(
          adapter_file,
          Checkpoint::Open(JoinPath(path, kAdapterWeightsName), options));
      FillFromCheckpoint(*adapter_file, &view);
    } else {
      view.kind = "lora-merged";
      TAILOR_ASSIGN_OR_RETURN(base, OpenCheckpointUri(args.base_uri, resolver));
      Checkpoint::Options options;
      options.resolver = &resolver;
      TAILOR_ASSIGN_OR_RETURN(std::unique_ptr<LoraFineTuned> lora,
                              LoraFineTuned::Create(base.get(), path, options));
      FillFromCheckpoint(*base, &view);
      for (const LoraModule& m : lora->modules())
        view.origin[m.base_tensor] = "lora";
      for (const auto& [name, key] : lora->replaced())
        view.origin[name] = "replaced";
      view.tensors = &lora->tensors();
      merged = std::move(lora);
    }
  } else {
    if (!args.base_uri.empty()) {
      return absl::InvalidArgumentError(
          "--base applies only to a LoRA adapter directory");
    }
    view.kind = "safetensors";
    TAILOR_ASSIGN_OR_RETURN(base, OpenCheckpointUri(args.uri, resolver));
    FillFromCheckpoint(*base, &view);
  }
  if (args.output == "json") {
    PrintJson(view, out);
  } else {
    PrintTable(view, out);
  }
  return absl::OkStatus();
}

}  // namespace tailor::cli
