// FusionRun's sharded runs (fusion_run.h; issue #20): the deterministic
// split of the fused tensors among the shards and the plan's digest, a
// shard's scratch writers and its bundle, and assembling every fused tensor
// from the bundles (shard_plan.h, shard_bundle.h).

#include <utility>

#include "absl/strings/str_cat.h"
#include "fusion/fusion_run.h"
#include "fusion/output_plan.h"
#include "fusion/shard_bundle.h"
#include "util/file_util.h"
#include "util/sha256.h"
#include "util/status_macros.h"

namespace tailor {
namespace fusion_internal {

namespace {

using Role = ShardOptions::Role;

// The scratch directory of a shard's writers under the shard directory.
std::string ScratchDir(const ShardOptions& shard) {
  return JoinPath(
      shard.dir,
      absl::StrCat(".scratch-", ShardBundleName(shard.index, shard.count)));
}

}  // namespace

nlohmann::json FusionRun::PlanDigest() const {
  nlohmann::json knobs = Knobs();
  knobs.erase("overwrite");
  nlohmann::json tasks = nlohmann::json::array();
  for (const auto& task : tasks_) {
    tasks.push_back({{"label", task->label},
                     {"keep", task->options.keep_ratio},
                     {"omega", task->options.omega},
                     {"patch", task->patch != nullptr},
                     {"hessians", task->calibration != nullptr},
                     {"patch_out", task->patch_writer != nullptr}});
  }
  nlohmann::json plan = nlohmann::json::array();
  for (const WorkItem& item : plan_) {
    plan.push_back({item.info->name, item.fuse});
  }
  return {{"format", "tailor-shard-plan/1"},
          {"knobs", knobs},
          {"tasks", tasks},
          {"outputs",
           {{"fused", writer_ != nullptr}, {"patch", stitched_ != nullptr}}},
          {"sources", PatchSources()},
          {"plan", plan},
          {"shards", options_.shard.count}};
}

absl::Status FusionRun::PlanShards() {
  const ShardOptions& shard = options_.shard;
  if (shard.role == Role::kNone) return absl::OkStatus();
  TAILOR_RETURN_IF_ERROR(
      ValidateShardIndex(shard.role == Role::kShard ? shard.index : 0,
                         shard.count, "--shard", "--shards"));
  // The flop estimate alone (and the stored size): the working-memory
  // estimate depends on the device, which may differ between shards.
  const std::vector<ExecutorItem> executor = ExecutorItems();
  std::vector<ShardCostItem> costs;
  std::vector<size_t> fused;
  for (size_t i = 0; i < plan_.size(); ++i) {
    if (!plan_[i].fuse) continue;
    costs.push_back({static_cast<int64_t>(i), plan_[i].info->name,
                     executor[i].cost,
                     static_cast<int64_t>(plan_[i].info->nbytes)});
    fused.push_back(i);
  }
  const std::vector<int> assigned = AssignShards(costs, shard.count);
  shard_of_.assign(plan_.size(), -1);
  for (size_t k = 0; k < fused.size(); ++k) shard_of_[fused[k]] = assigned[k];
  plan_sha256_ = Sha256Hex(PlanDigest().dump());
  if (shard.role != Role::kAssemble) return absl::OkStatus();
  std::vector<std::vector<ShardBundleItem>> expected(shard.count);
  for (size_t i = 0; i < plan_.size(); ++i) {
    if (shard_of_[i] < 0) continue;
    expected[shard_of_[i]].push_back(
        {static_cast<int64_t>(i), plan_[i].info->name});
  }
  if (shard.remote.empty()) {
    TAILOR_ASSIGN_OR_RETURN(bundles_, OpenShardBundles(shard.dir, shard.count,
                                                       plan_sha256_, expected));
  } else {
    TAILOR_ASSIGN_OR_RETURN(
        bundles_, OpenRemoteShardBundles(resolver_, shard.remote,
                                         JoinPath(shard.dir, ".assemble"),
                                         shard.count, plan_sha256_, expected));
  }
  return absl::OkStatus();
}

bool FusionRun::SkippedHere(size_t index) const {
  return options_.shard.role == Role::kShard &&
         shard_of_[index] != options_.shard.index;
}

absl::Status FusionRun::OpenShardOutputs() {
  const std::string scratch = ScratchDir(options_.shard);
  TAILOR_RETURN_IF_ERROR(RemoveAll(scratch));
  TAILOR_RETURN_IF_ERROR(MakeDirectories(scratch));
  if (!spec_.output_uri.empty()) {
    CheckpointWriterOptions options;
    options.preserve_file_assignment = true;
    options.overwrite = true;
    TAILOR_ASSIGN_OR_RETURN(
        writer_, CheckpointWriter::Create(JoinPath(scratch, "out"),
                                          base_->tensors(), options));
  }
  if (!spec_.patch_uri.empty()) {
    patch_path_ = JoinPath(scratch, "patch.safetensors");
    TAILOR_ASSIGN_OR_RETURN(stitched_, PatchWriter::Create(patch_path_, true));
    if (WritesTaskPatches(spec_)) {
      for (size_t i = 0; i < tasks_.size(); ++i) {
        Task* task = tasks_[i].get();
        if (task->patch) continue;
        task->patch_out = TaskPatchPath(patch_path_, TaskLabel(spec_, i));
        TAILOR_ASSIGN_OR_RETURN(task->patch_writer,
                                PatchWriter::Create(task->patch_out, true));
      }
    }
  }
  return absl::OkStatus();
}

void FusionRun::ZeroTimings(nlohmann::json* report) {
  if (report->contains("seconds")) (*report)["seconds"] = 0.0;
  if (!report->contains("tasks")) return;
  for (nlohmann::json& t : (*report)["tasks"]) {
    if (t.is_object() && t.contains("seconds")) t["seconds"] = 0.0;
  }
}

absl::StatusOr<JournalEntry> FusionRun::FromBundle(size_t index,
                                                   const TensorInfo& info) {
  const FusionJournal& bundle = SourceJournal(static_cast<int64_t>(index));
  absl::StatusOr<JournalEntry> e = bundle.Read(static_cast<int64_t>(index));
  if (const absl::Status fits = EntryFits(e, info); !fits.ok()) {
    return absl::FailedPreconditionError(
        absl::StrCat("bundle ", bundle.dir(), ": tensor ", index, " ('",
                     info.name, "') is unusable: ", fits.message()));
  }
  return *std::move(e);
}

const FusionJournal& FusionRun::SourceJournal(int64_t index) const {
  if (options_.shard.role == Role::kAssemble) {
    return *bundles_[shard_of_[index]];
  }
  return *journal_;
}

absl::StatusOr<nlohmann::json> FusionRun::FinishShard() {
  const ShardOptions& shard = options_.shard;
  {
    absl::MutexLock lock(&journal_mu_);
    if (journal_failed_) {
      return absl::ResourceExhaustedError(absl::StrCat(
          "shard ", shard.index, " of ", shard.count, ": its journal ",
          journal_->dir(),
          " could not record every tensor (see the warnings); free room "
          "on --shard-dir and run the shard again"));
    }
  }
  // The scratch writers were never published: gone with their staging.
  writer_.reset();
  stitched_.reset();
  for (auto& task : tasks_) task->patch_writer.reset();
  TAILOR_RETURN_IF_ERROR(RemoveAll(ScratchDir(shard)));
  std::vector<ShardBundleItem> items;
  int64_t bytes = 0;
  for (size_t i = 0; i < plan_.size(); ++i) {
    if (shard_of_[i] != shard.index) continue;
    items.push_back({static_cast<int64_t>(i), plan_[i].info->name});
    bytes += static_cast<int64_t>(plan_[i].info->nbytes);
  }
  if (shard.remote.empty()) {
    TAILOR_RETURN_IF_ERROR(WriteShardBundle(shard.dir, shard.index, shard.count,
                                            plan_sha256_, *journal_, items));
  } else {
    TAILOR_RETURN_IF_ERROR(UploadShardBundle(resolver_, shard.remote,
                                             shard.index, shard.count,
                                             plan_sha256_, *journal_, items));
  }
  Emit(ProgressEvent::Kind::kFinished);
  absl::MutexLock lock(&mu_);
  return nlohmann::json{
      {"method", std::string(MethodName(spec_.method))},
      {"shard",
       {{"index", shard.index},
        {"count", shard.count},
        {"bundle",
         shard.remote.empty()
             ? ShardBundleDir(shard.dir, shard.index, shard.count)
             : absl::StrCat(shard.remote,
                            ShardBundleName(shard.index, shard.count), "/")},
        {"plan_sha256", plan_sha256_},
        {"tensors", static_cast<int64_t>(items.size())},
        {"base_bytes", bytes},
        {"resumed_tensors", resumed_tensors_},
        {"seconds", start_.Seconds()}}},
      {"warnings", warnings_}};
}

}  // namespace fusion_internal
}  // namespace tailor
