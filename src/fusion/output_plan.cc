#include "fusion/output_plan.h"

#include <sys/stat.h>

#include <map>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "util/file_util.h"
#include "util/quote.h"
#include "util/status_macros.h"

namespace tailor {
namespace {

// Component-wise: `path` equals `dir` or lies under it (canonical paths, or
// canonical remote URIs, whose prefixes end in '/').
bool Contains(absl::string_view dir, absl::string_view path) {
  if (dir == "/") return true;
  while (dir.size() > 1 && dir.back() == '/') dir.remove_suffix(1);
  while (path.size() > 1 && path.back() == '/') path.remove_suffix(1);
  if (!absl::StartsWith(path, dir)) return false;
  return path.size() == dir.size() || path[dir.size()] == '/';
}

bool Overlap(absl::string_view a, absl::string_view b) {
  return Contains(a, b) || Contains(b, a);
}

// How `a` relates to `b`, for messages.
std::string Relation(absl::string_view a, absl::string_view b) {
  if (a == b) return "is";
  return Contains(a, b) ? "contains" : "lies inside";
}

absl::Status WithField(const std::string& field, const absl::Status& s) {
  return absl::Status(s.code(), absl::StrCat(field, ": ", s.message()));
}

}  // namespace

bool WritesTaskPatches(const FusionSpec& spec) {
  return !spec.patch_uri.empty() && spec.tasks.size() > 1 &&
         (spec.method == Method::kTailor || spec.method == Method::kMagnitude);
}

std::string TaskLabel(const FusionSpec& spec, size_t i) {
  const std::string& label = spec.tasks[i].label;
  return label.empty() ? absl::StrCat("task", i) : label;
}

std::string TaskPatchPath(const std::string& stitched,
                          const std::string& label) {
  std::string stem = stitched;
  if (absl::EndsWith(stem, ".safetensors")) {
    stem.resize(stem.size() - std::string(".safetensors").size());
  }
  return absl::StrCat(stem, ".", label, ".safetensors");
}

absl::StatusOr<OutputPlan> ResolveOutputPlan(const FusionSpec& spec,
                                             const UriResolver& resolver,
                                             bool with_inputs) {
  OutputPlan plan;
  auto input = [&](const std::string& field,
                   const std::string& uri) -> absl::Status {
    if (uri.empty() || !with_inputs) return absl::OkStatus();
    absl::StatusOr<std::string> path = resolver.ResolveExisting(uri);
    if (!path.ok()) return WithField(field, path.status());
    // A FIFO, socket or device would block or never end when the job opens
    // it: refused here (a stat, which cannot block). Remote objects are
    // objects or prefixes by construction.
    if (!IsRemoteUri(*path)) {
      TAILOR_RETURN_IF_ERROR(WithField(field, CheckFileOrDirectory(*path)));
    }
    plan.inputs.push_back({field, *path, resolver.PathIsDirectory(*path)});
    return absl::OkStatus();
  };
  auto output = [&](const std::string& field, const std::string& uri,
                    bool directory) -> absl::StatusOr<std::string> {
    absl::StatusOr<std::string> path = resolver.ResolveForWrite(uri);
    if (!path.ok()) return WithField(field, path.status());
    plan.outputs.push_back({field, *path, directory});
    return *path;
  };
  TAILOR_RETURN_IF_ERROR(input("pretrained", spec.pretrained_uri));
  for (size_t i = 0; i < spec.tasks.size(); ++i) {
    const TaskSpec& t = spec.tasks[i];
    const std::string f = absl::StrCat("tasks[", i, "].");
    TAILOR_RETURN_IF_ERROR(input(f + "finetuned", t.finetuned_uri));
    TAILOR_RETURN_IF_ERROR(input(f + "patch", t.patch_uri));
    TAILOR_RETURN_IF_ERROR(input(f + "hessians", t.hessian_uri));
  }
  if (!spec.output_uri.empty()) {
    TAILOR_RETURN_IF_ERROR(output("out", spec.output_uri, true).status());
  }
  if (!spec.patch_uri.empty()) {
    TAILOR_ASSIGN_OR_RETURN(std::string stitched,
                            output("patch_out", spec.patch_uri, false));
    if (WritesTaskPatches(spec)) {
      for (size_t i = 0; i < spec.tasks.size(); ++i) {
        if (!spec.tasks[i].patch_uri.empty()) continue;  // already a patch
        const std::string label = TaskLabel(spec, i);
        plan.outputs.push_back(
            {absl::StrCat("patch_out (the per-task patch of task '", label,
                          "')"),
             TaskPatchPath(stitched, label), false});
      }
    }
  }
  if (!spec.report_uri.empty()) {
    TAILOR_RETURN_IF_ERROR(output("report", spec.report_uri, false).status());
  }
  return plan;
}

absl::Status CheckOutputPlan(const OutputPlan& plan,
                             const UriResolver& resolver) {
  for (size_t i = 0; i < plan.outputs.size(); ++i) {
    const OutputPlan::Entry& o = plan.outputs[i];
    if (IsRemoteUri(o.path)) {
      absl::StatusOr<ObjectUri> uri = ParseObjectUri(o.path);
      if (!uri.ok()) return WithField(o.field, uri.status());
      if (resolver.remote_roots().ContainsRoot(*uri)) {
        return absl::PermissionDeniedError(absl::StrCat(
            o.field, ": ", Quote(o.path),
            " is or contains an allowed root; an output must lie strictly "
            "inside an allowed root"));
      }
    }
    for (const std::string& root : resolver.roots()) {
      if (Contains(o.path, root)) {
        return absl::PermissionDeniedError(absl::StrCat(
            o.field, ": ", Quote(o.path), " ", Relation(o.path, root),
            " the allowed root ", Quote(root),
            "; an output must lie strictly inside an allowed root"));
      }
    }
    for (const std::string& p : resolver.protected_paths()) {
      if (Overlap(o.path, p)) {
        return absl::PermissionDeniedError(
            absl::StrCat(o.field, ": ", Quote(o.path), " ", Relation(o.path, p),
                         " the server's data directory ", Quote(p),
                         "; outputs may not touch it"));
      }
    }
    for (const OutputPlan::Entry& in : plan.inputs) {
      if (Overlap(o.path, in.path)) {
        return absl::InvalidArgumentError(absl::StrCat(
            o.field, ": ", Quote(o.path), " ", Relation(o.path, in.path),
            " the job's input ", in.field, " (", Quote(in.path),
            "); an output may not overlap an input"));
      }
    }
    for (size_t j = 0; j < i; ++j) {
      const OutputPlan::Entry& other = plan.outputs[j];
      if (Overlap(o.path, other.path)) {
        return absl::InvalidArgumentError(absl::StrCat(
            o.field, ": ", Quote(o.path), " ", Relation(o.path, other.path),
            " the job's other output ", other.field, " (", Quote(other.path),
            "); outputs may not overlap"));
      }
    }
    struct stat st;
    // (A remote output's existing object is checked when it is uploaded:
    // fusion/remote_outputs.h.)
    if (!IsRemoteUri(o.path) && ::lstat(o.path.c_str(), &st) == 0) {
      if (o.directory && !S_ISDIR(st.st_mode)) {
        return absl::InvalidArgumentError(absl::StrCat(
            o.field, ": ", Quote(o.path),
            " exists and is not a directory; the fused checkpoint is a "
            "directory"));
      }
      if (!o.directory && !S_ISREG(st.st_mode)) {
        return absl::InvalidArgumentError(absl::StrCat(
            o.field, ": ", Quote(o.path),
            " exists and is not a regular file (a directory?); this output "
            "is a single file"));
      }
    }
  }
  return absl::OkStatus();
}

std::vector<std::pair<std::string, std::vector<std::string>>> StagingDirs(
    const OutputPlan& plan) {
  std::map<std::string, std::vector<std::string>> dirs;
  for (const OutputPlan::Entry& o : plan.outputs) {
    dirs[Dirname(o.path)].push_back(Basename(o.path));
  }
  return {dirs.begin(), dirs.end()};
}

absl::Status MakeOutputParents(const OutputPlan& plan,
                               const UriResolver& resolver) {
  for (const OutputPlan::Entry& o : plan.outputs) {
    TAILOR_RETURN_IF_ERROR(resolver.MakeParentDirectories(o.path, o.field));
  }
  return absl::OkStatus();
}

}  // namespace tailor
