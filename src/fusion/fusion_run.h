#ifndef TAILOR_FUSION_FUSION_RUN_H_
#define TAILOR_FUSION_FUSION_RUN_H_

// One run of a fusion job (RunFusionJob, fusion_job.h, is the public entry):
// internal to the fusion library. Its steps live in files of their own,
// each a part of this class:
//   fusion_run.cc          Run(): the steps in order, the executor glue
//                          (ComputeItem / CommitItem) and progress events
//   fusion_run_planner.cc  inputs, per-tensor plan, output plan and writers
//   fusion_run_layers.cc   per-layer parameters (FusionSpec::gradients)
//   fusion_run_journal.cc  the per-tensor journal: resume, spool, record
//   fusion_run_fuse.cc     computing one fused tensor whole (FuseOne)
//   fusion_run_stream.cc   streaming one fused tensor in chunks
//   fusion_run_publish.cc  feeding results to the writers and the report,
//                          staging and publishing every output
//   fusion_run_shard.cc    sharded runs (issue #20): the split, a shard's
//                          bundle, assembling from the bundles
// Shared helpers: fusion_run_support.h. A FusionRun is used once: construct,
// Run(), destroy. LibTorch errors are caught by the caller (CatchTorch in
// RunFusionJob).

#include <ATen/ATen.h>

#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "fusion/calibration.h"
#include "fusion/fusion_run_support.h"
#include "fusion/fusion_spec.h"
#include "fusion/job_executor.h"
#include "fusion/journal.h"
#include "fusion/layer_options.h"
#include "fusion/patch.h"
#include "fusion/run_options.h"
#include "fusion/streamed_merge.h"
#include "io/checkpoint.h"
#include "io/checkpoint_writer.h"
#include "io/tensor_source.h"
#include "nlohmann/json.hpp"
#include "storage/uri_resolver.h"
#include "util/staged_output.h"

namespace tailor {
namespace fusion_internal {

// One task of the job, as opened by the planner.
struct Task {
  std::string label;
  const TaskSpec* spec = nullptr;
  std::unique_ptr<TensorSource> finetuned;
  std::unique_ptr<PatchFile> patch;
  std::unique_ptr<CalibrationFile> calibration;
  TailorOptions options;
  std::string patch_out;  // per-task patch path, if written
  std::unique_ptr<PatchWriter> patch_writer;
};

// A task's Model Tailor options under `spec`: the job's, with the task's
// own keep and omega; magnitude: omega 1 and no compensation.
TailorOptions TaskTailorOptions(const FusionSpec& spec, const TaskSpec& task);

// The parameters of one layer's tensors when the spec has per-layer values
// (FusionSpec::gradients; layer_gradient.h): the spec at the layer's
// gradient position and each task's options from it.
struct LayerParams {
  std::optional<int64_t> layer;  // nullopt: the tensors outside the layers
  FusionSpec spec;               // SpecAtPosition, no lists left
  std::vector<TailorOptions> task_options;  // by task, as Task::options
};

// One tensor of the base checkpoint in plan order: fused or copied.
struct WorkItem {
  const TensorInfo* info = nullptr;
  bool fuse = false;
  std::string why_copied;  // for copied tensors
  // Fused tensors of a spec with per-layer values: their layer's
  // parameters (PlanLayers); null: spec_ and each Task::options.
  const LayerParams* params = nullptr;
};

class FusionRun {
 public:
  FusionRun(const FusionSpec& spec, const UriResolver& resolver,
            const RunOptions& options)
      : spec_(spec), resolver_(resolver), options_(options) {}
  FusionRun(const FusionRun&) = delete;
  FusionRun& operator=(const FusionRun&) = delete;

  // Validates the spec, opens and plans, computes every tensor on
  // options.workers threads, then publishes every output or none. Returns
  // the report.
  absl::StatusOr<nlohmann::json> Run();

 private:
  // What plan item i left for CommitItem: written by the one worker that
  // computes it, read by the committer after the executor handed it over
  // (RunOrdered orders the two).
  struct ItemResult {
    std::optional<JournalEntry> fused;  // fused or resumed items
    nlohmann::json entry;               // copied items: the report row
    bool written = false;  // the fused tensor went to writer_ already
  };

  // ---- the run (fusion_run.cc)

  // The executor's view of the plan: a fused tensor costs its arithmetic
  // (rows x cols^2 for a calibrated tailor tensor: the OBS update and the
  // Hessian's preparation; its elements otherwise) and holds its working
  // memory estimate while computing, then its result (stored bytes and
  // patch entries, at most a few times the tensor) until committed; a
  // copied tensor holds its bytes.
  std::vector<ExecutorItem> ExecutorItems() const;

  // Computes plan item `index` (a worker thread): a copied tensor goes to
  // writer_ now, a fused one is resumed from the journal or computed on
  // its device (a lease's, with a scheduler) and journalled; a streamed
  // one writes its chunks to writer_ (each tensor lands at its planned
  // offset, so the order of tensors does not matter). The rest of its
  // contribution waits in results_[index] for CommitItem. Counted as done
  // (a kTensorDone event) as soon as it completes.
  absl::Status ComputeItem(size_t index);

  // Feeds plan item `index`'s result to the writers and the report (the
  // calling thread, in plan order).
  absl::Status CommitItem(size_t index);

  // Sends a progress event (without a payload, or `event`) to
  // options_.progress, if any.
  void Emit(ProgressEvent::Kind kind);
  void Emit(ProgressEvent event);

  // Events go out one at a time, with the counters they carry.
  void EmitLocked(ProgressEvent event) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  // A warning event that the report does not list (journal notes: they
  // would make a resumed run's report differ from an uninterrupted one's).
  void Note(std::string message);

  // A warning: an event now, and a line of the report's "warnings".
  void Warn(std::string message);

  // ---- planning (fusion_run_planner.cc)

  // Opens the base and every task's fine-tuned model or patch and
  // calibration file (tasks_), recording their fingerprints (sources_).
  absl::Status OpenInputs();

  // Why `task` cannot be paired with base tensor `info`; empty if it can.
  std::string Mismatch(const Task& task, const TensorInfo& info) const;

  // Tells the prepared-Hessian cache which plan positions use each
  // (task, Hessian key), so an entry lives from its first user to its last.
  void ExpectHessians();

  // One WorkItem per base tensor (plan_): fused, or copied and why. A
  // mismatch is an error or, with on_mismatch: copy_base, a warning; so is
  // a task tensor the base lacks (always an error for a patch).
  absl::Status Plan();

  // The tensor names of a task's fine-tuned model or patch.
  static std::vector<std::string> TaskTensorNames(const Task& task);

  // With per-layer values (spec_.gradients): the layer count of the base
  // (layer_gradient.h CountLayers: its config.json, else its tensor names)
  // and each fused item's LayerParams (layer_params_). After Plan.
  absl::Status PlanLayers();

  // What fused plan item `index` is computed with: its layer's spec and
  // task options, or spec_ and the tasks' own.
  const FusionSpec& SpecAt(size_t index) const;
  const TailorOptions& OptionsAt(size_t index, size_t task) const;

  // With per-layer values: the layer and the values plan item `index` was
  // computed with, added to its report row ("layer", "parameters", and
  // each task's effective keep/omega).
  void AddLayerParameters(size_t index, nlohmann::json* row) const;

  // Checks the output plan (output_plan.h) with every file the inputs
  // really read, then creates the writers (writer_, stitched_, the per-task
  // patch writers, report_out_) at the planned paths.
  absl::Status OpenOutputs();

  // ---- the journal (fusion_run_journal.cc)

  // What a journal must have been written by: this spec over these inputs.
  nlohmann::json JournalIdentity() const;

  // Opens options_.journal_dir (journal_), if set: resumed from when it
  // matches JournalIdentity(), emptied otherwise (a note says which).
  absl::Status OpenJournal();

  // The journal is an optimisation: when it cannot be written (a full data
  // volume) the job goes on without it, and a later run recomputes what it
  // lacks.
  void WriteJournal(const JournalEntry& entry);

  // A journal spool for the stored bytes of streamed tensor `index`, or
  // null without a journal. When the journal cannot take them (its limits)
  // the job goes on without it, as WriteJournal does.
  std::shared_ptr<JournalFusedSpool> BeginSpool(size_t index,
                                                const TensorInfo& info);

  // Appends a streamed chunk to `spool` (if any; each spool belongs to one
  // worker); a failed write (ENOSPC) drops the spool and the journal, never
  // the job.
  void Spool(std::shared_ptr<JournalFusedSpool>& spool,
             absl::string_view bytes);

  // The job goes on without the journal (journal_failed_: nothing more is
  // written to it, and it stays open for the writes in flight to fail).
  void DropJournal(int64_t index, const std::string& name,
                   const absl::Status& why)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(journal_mu_);

  // The journal's entry for plan item `index`, if it has a valid one that
  // fits this job's outputs; otherwise nullopt (and a note if it was
  // damaged), and the tensor is computed again.
  std::optional<JournalEntry> Resume(size_t index, const TensorInfo& info);
  // A journal or bundle entry read for plan item `info` (`e`: the read's
  // result) fits this job's outputs: the same tensor, the fused bytes when
  // a checkpoint is written, the stitched and per-task patch entries when
  // patches are. Otherwise the read's error or INVALID_ARGUMENT saying what
  // does not fit (Resume and FromBundle word it for their caller).
  absl::Status EntryFits(const absl::StatusOr<JournalEntry>& e,
                         const TensorInfo& info) const;

  // ---- computing a tensor whole (fusion_run_fuse.cc)

  // An empty journal entry for plan item `index` (tensor `info`), which
  // FuseOne and the streamed paths fill.
  static JournalEntry NewEntry(size_t index, const TensorInfo& info);

  // Whether `info` surely streams on the host: a CPU job with no scheduler
  // to move it (stitched patches, which pack a tensor-wide patch entry,
  // keep the whole-tensor estimate). A streamed threshold merge that meets
  // a non-finite value falls back to FuseOne, which this does not bound.
  bool StreamsOnHost(const TensorInfo& info) const;

  // FuseOne's peak working memory for `info` (fusion/working_memory.h), or
  // the chunks a tensor that StreamsOnHost holds.
  int64_t EstimateWorkingBytes(const TensorInfo& info) const;

  // How FuseOne reads a tensor: in the compute type, onto `device`.
  ReadOptions ComputeRead(const at::Device& device) const;

  // Computes fused tensor `index` of the plan: everything it contributes to
  // the outputs and the report, without touching them (ApplyFused does).
  absl::StatusOr<JournalEntry> FuseOne(size_t index, const TensorInfo& info,
                                       const at::Device& device);

  // ---- streaming a tensor (fusion_run_stream.cc)

  // Whether fused tensor `info` streams (StreamOne) rather than being
  // computed whole (FuseOne): a data-free elementwise merge (task
  // arithmetic, DARE) on the CPU whose only output is the fused checkpoint
  // (patches are packed per whole tensor), with every task a safetensors
  // checkpoint (a LoRA view is computed whole) and a stored dtype LibTorch
  // has; or stitching task patches only (StitchesPatches: every output
  // streams). Never with options_.stream_chunk_elements <= 0.
  //
  // Magnitude, TIES and SPIDER stream as well (streamed_merge.h: a
  // tensor-wide statistic in passes over the chunks, then the output pass),
  // on a floating stored dtype. Magnitude streams only the selections it
  // can reproduce exactly: min-max normalisation with Scope::kLayer, or
  // Scope::kRow on a tensor scored as one row (not 2-D, or one row), in
  // the job's compute type; z-score normalisation, Scope::kBlock and
  // several-row Scope::kRow are computed whole.
  bool Streams(const TensorInfo& info, const at::Device& device) const;

  // The streamed paths' view of fused tensor `info` (a tensor that
  // Streams() with fine-tuned tasks): its stored dtype and element size,
  // chunks of options_.stream_chunk_elements (at most the tensor), the base
  // and every task's fine-tuned checkpoint, the job's compute type.
  StreamedTensor StreamedTensorOf(const TensorInfo& info) const;

  // Where a streamed tensor's stored bytes go: writer_ and, with a journal,
  // its spool (BeginSpool).
  struct StreamedOutput {
    std::optional<CheckpointWriter::TensorStream> stream;
    std::shared_ptr<JournalFusedSpool> spool;
  };

  // Appends the next chunk of streamed tensor `index` to writer_ and the
  // spool. The tensor is begun in both at its first chunk, so that a bad
  // input found before it is refused with nothing begun.
  absl::Status WriteStreamed(size_t index, const TensorInfo& info,
                             absl::string_view bytes, StreamedOutput* output);

  // A streamed tensor's last step: ends it in writer_ (if begun), tells
  // hessians_ plan item `index` is done, and completes `entry` with the
  // spool and the report row (FusedReportEntry with `kept` and `per_task`,
  // the seconds since `t0`).
  absl::Status FinishStreamed(size_t index, const TensorInfo& info,
                              int64_t kept, const nlohmann::json& per_task,
                              const Stopwatch& t0, StreamedOutput* output,
                              JournalEntry* entry);

  // The report's per-task rows of a streamed tensor: each task's label.
  nlohmann::json TaskLabels() const;

  // StreamOne for magnitude, TIES and SPIDER (streamed_merge.h). A tensor
  // holding a non-finite input or delta is computed whole by FuseOne
  // (nothing of it has been written yet), which reports it as before, and
  // written from its result.
  absl::StatusOr<JournalEntry> StreamThreshold(size_t index,
                                               const TensorInfo& info);

  // FuseOne for a tensor that Streams(): reads the base and fine-tuned
  // tensors in consecutive chunks of options_.stream_chunk_elements
  // elements into buffers allocated once per tensor, merges, fuses and
  // converts each chunk, and writes it straight to writer_ (the caller
  // must not write the tensor again). Working memory is a few chunks,
  // not the tensor; with a journal the stored bytes are spooled to it chunk
  // by chunk (BeginSpool, a sidecar file). Every operation is
  // elementwise and the same as FuseOne's (DARE draws each task's
  // generator in the same element order), so the output bytes and the
  // report are identical. A NaN/Inf input is reported at the first chunk
  // holding one (pre-trained before fine-tuned within a chunk).
  absl::StatusOr<JournalEntry> StreamOne(size_t index, const TensorInfo& info);

  // StreamOne for the elementwise mergekit-family methods
  // (mergekit_methods.h: ChunkedMergekit), in fusion_run_mergekit.cc: SLERP
  // and Model Stock read the chunks twice (their float64 statistics, then
  // the output pass); the bytes are FuseOne's (MergekitMerge is the same
  // class fed one chunk).
  absl::StatusOr<JournalEntry> StreamMergekit(size_t index,
                                              const TensorInfo& info);

  // Whether the job stitches task patches only (tailor or magnitude, every
  // task a patch): no fine-tuned tensor is read and every merge is
  // elementwise, so tensors stream (StreamStitch).
  bool StitchesPatches() const;

  // FuseOne for a tensor stitched from patches only (StitchesPatches() and
  // Streams()): StreamStitchedTensor (stitch_stream.h) in chunks of
  // options_.stream_chunk_elements, each chunk written straight to writer_
  // (the caller must not write the tensor again). The same bytes, stitched
  // patch entry and report entry as FuseOne. Working memory is a few chunks
  // plus the stitched patch entry when there is a patch output; with a
  // journal and a fused checkpoint the stored bytes are spooled to it.
  absl::StatusOr<JournalEntry> StreamStitch(size_t index,
                                            const TensorInfo& info);

  // ---- committing and publishing (fusion_run_publish.cc)

  // Feeds a fused tensor's recorded work -- computed now or read back from
  // the journal -- to the writers, the report and the totals, in the same
  // order either way. Returns the tensor's report entry.
  absl::StatusOr<nlohmann::json> ApplyFused(const TensorInfo& info,
                                            const JournalEntry& e,
                                            bool written);

  // Copies base tensor `info` to writer_ (if any) byte for byte; returns
  // its report row, with `why` it was not fused.
  absl::StatusOr<nlohmann::json> CopyOne(const TensorInfo& info,
                                         const std::string& why);

  // The spec's fusion settings as recorded in the patches' metadata: the
  // spec without its paths, device and threads.
  nlohmann::json Knobs() const;

  // sources_ as recorded in the patches' metadata: roles, labels and
  // content fingerprints without the URIs (issue #17 point 3), so that a
  // patch's bytes depend only on its inputs' content and the knobs; the
  // report keeps the URIs.
  nlohmann::json PatchSources() const;

  // Stages every output completely (written, fsynced), then publishes them
  // as one unit (PublishAll: all or nothing, see staged_output.h).
  absl::Status Publish();

  // ---- sharded runs (fusion_run_shard.cc, shard_plan.h, shard_bundle.h)

  // With options_.shard.role set: splits the fused tensors among the shards
  // (shard_of_) and computes the plan's digest (plan_sha256_); assembling,
  // opens and checks every bundle (bundles_). After OpenOutputs.
  absl::Status PlanShards();

  // What the plan digest covers: the knobs, the tasks' settings, which
  // outputs exist, the inputs' content fingerprints, the plan and the shard
  // count (not paths, device, threads or overwrite).
  nlohmann::json PlanDigest() const;

  // A shard run leaves plan item `index` to another shard (or, copied, to
  // assemble).
  bool SkippedHere(size_t index) const;

  // A shard's writers: in a scratch directory under options_.shard.dir
  // (streamed tensors write through them to the journal's spool); never
  // published. The spec's outputs are not touched.
  absl::Status OpenShardOutputs();

  // Per-tensor timings in a shard's journal entries are 0: its bundle's
  // bytes depend only on the plan.
  static void ZeroTimings(nlohmann::json* report);

  // Assembling: fused plan item `index` from its shard's bundle, checked
  // against the plan as Resume checks a journal entry (an error, never a
  // recomputation).
  absl::StatusOr<JournalEntry> FromBundle(size_t index, const TensorInfo& info);

  // The journal an entry of plan item `index` was read from.
  const FusionJournal& SourceJournal(int64_t index) const;

  // A shard run's last step instead of Publish: writes its bundle; returns
  // a short report of the shard.
  absl::StatusOr<nlohmann::json> FinishShard();

  const FusionSpec& spec_;
  const UriResolver& resolver_;
  const RunOptions& options_;
  Stopwatch start_;
  // Without a scheduler, the device of every fused tensor (set before the
  // workers start); with one each tensor's lease names its own.
  at::Device job_device_ = at::kCPU;
  std::unique_ptr<Checkpoint> base_;
  std::vector<std::unique_ptr<Task>> tasks_;
  std::vector<WorkItem> plan_;
  // By layer index (-1: outside the layers); set by PlanLayers before the
  // workers start, read-only after (WorkItem::params point into it).
  std::map<int64_t, LayerParams> layer_params_;
  std::unique_ptr<CheckpointWriter> writer_;
  std::unique_ptr<PatchWriter> stitched_;
  std::unique_ptr<StagedOutput> report_out_;
  // Set by OpenJournal before the workers start, never reset after.
  std::unique_ptr<FusionJournal> journal_;
  absl::Mutex journal_mu_;  // serialises journal_->Write
  // A write failed: the job goes on without the journal.
  bool journal_failed_ ABSL_GUARDED_BY(journal_mu_) = false;
  std::vector<ItemResult> results_;  // by plan index, see ItemResult
  std::string patch_path_, report_path_;
  nlohmann::json sources_ = nlohmann::json::array();
  nlohmann::json report_;
  // Guards what workers, the committer and progress events share: the
  // progress counters, the report's warnings (one per tensor, appended in
  // plan order by the committer), the devices used and resumed tensors.
  // The events themselves are emitted under it, one at a time.
  mutable absl::Mutex mu_;
  std::vector<std::string> warnings_ ABSL_GUARDED_BY(mu_);
  int64_t done_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t bytes_done_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t bytes_total_ = 0;  // set by Plan, before the workers
  std::set<std::string> devices_used_ ABSL_GUARDED_BY(mu_);  // lease names
  int64_t resumed_tensors_ ABSL_GUARDED_BY(mu_) = 0;
  // The committer's alone (CommitItem, ApplyFused, then Publish): the
  // report rows and the totals.
  nlohmann::json tensors_ = nlohmann::json::array();
  int64_t fused_tensors_ = 0, copied_tensors_ = 0;
  int64_t total_count_ = 0, total_kept_ = 0;
  double error_mask_only_ = 0, error_compensated_ = 0;
  // Whether any summand of the totals above is a sampled estimate.
  bool error_mask_only_estimated_ = false, error_compensated_estimated_ = false;
  // Thread-safe; prepares each Hessian once however many workers ask.
  PreparedHessianCache hessians_;
  // Sharded runs (PlanShards, then read-only): the shard of each plan item
  // (-1: copied, assemble's), the plan's digest, and when assembling the
  // bundles by shard.
  std::vector<int> shard_of_;
  std::string plan_sha256_;
  std::vector<std::unique_ptr<FusionJournal>> bundles_;
};

}  // namespace fusion_internal
}  // namespace tailor

#endif  // TAILOR_FUSION_FUSION_RUN_H_
