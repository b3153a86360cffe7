#include "client/fuse_command.h"

#include <csignal>
#include <iostream>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_replace.h"
#include "client/exit_codes.h"
#include "client/job_file.h"
#include "client/progress_bar.h"
#include "client/remote_flags.h"
#include "client/shard_flags.h"
#include "fusion/apply_patch.h"
#include "fusion/fusion_job.h"
#include "fusion/output_plan.h"
#include "storage/uri_resolver.h"
#include "util/cpu_tuning.h"
#include "util/file_util.h"
#include "util/memory.h"

namespace tailor::cli {
namespace {

std::atomic<bool> g_cancel{false};

extern "C" void OnInterrupt(int) { g_cancel.store(true); }

void PrintSummary(const nlohmann::json& report) {
  const nlohmann::json& t = report["totals"];
  std::cout << absl::StrFormat(
      "method %s: %d tensors fused, %d copied; kept %d of %d entries "
      "(%.4f%%)\n",
      report["method"].get<std::string>(), t["tensors_fused"].get<int64_t>(),
      t["tensors_copied"].get<int64_t>(), t["kept"].get<int64_t>(),
      t["entries"].get<int64_t>(), 100 * t["kept_fraction"].get<double>());
  if (t["error_mask_only"].get<double>() > 0) {
    std::cout << absl::StrFormat(
        "layer reconstruction error: mask only %.6g, compensated %.6g (%.2f%% "
        "lower)\n",
        t["error_mask_only"].get<double>(),
        t["error_compensated"].get<double>(),
        100 * t["error_reduction"].get<double>());
  }
  for (const auto& [kind, where] : report["outputs"].items()) {
    std::cout << kind << ": "
              << (where.is_string() ? where.get<std::string>() : where.dump())
              << "\n";
  }
  std::cout << absl::StrFormat("device %s, %.2f s\n",
                               t["device"].get<std::string>(),
                               t["seconds"].get<double>());
}

}  // namespace

CLI::App* FuseCommand::Add(CLI::App& app) {
  cmd_ = assemble_
             ? app.add_subcommand(
                   "assemble",
                   "Publish the outputs of a sharded job (fuse --local --shard "
                   "I --shards N --shard-dir DIR|s3://...) from its N "
                   "bundles: give "
                   "the job's spec again (-f job.yaml or the same flags); "
                   "byte-identical to a single-machine fuse --local")
             : app.add_subcommand(
                   "fuse",
                   "Fuse fine-tuned checkpoints (or patches) into a "
                   "pre-trained base. With --local the job runs in this "
                   "process.");
  CLI::App* c = cmd_;
  if (assemble_) {
    c->add_option("--shards", shards_, "number of shard bundles, 1..10000");
    c->add_option("--from", shard_dir_,
                  "directory or s3:// prefix holding the bundles "
                  "(shard-IIIII-of-NNNNN/; from s3:// they are read into "
                  "--scratch-dir, removed when assemble ends)");
  } else {
    c->add_flag("--local", local_,
                "run in-process (required; to run on tailord, use submit)");
    c->add_option("--shard", shard_,
                  "with --shards: compute only shard I's share of the fused "
                  "tensors, 0 <= I < N (default $JOB_COMPLETION_INDEX), and "
                  "write its bundle to --shard-dir instead of the outputs");
    c->add_option("--shards", shards_,
                  "split the job into N shards (see --shard, assemble)");
    c->add_option("--shard-dir", shard_dir_,
                  "directory on a volume every shard and assemble mount "
                  "(bundles and shard journals go there), or an s3:// "
                  "prefix (bundles uploaded there, each visible once "
                  "complete; the journal stays in --scratch-dir)");
  }
  c->add_option(
       "-f,--job-file", job_file_,
       "YAML job file with the same fields as these flags (keep, omega, "
       "lambda, density, t: a number or a list over the layers), or a "
       "mergekit config (a top-level merge_method); flags override it")
      ->check(CLI::ExistingFile);
  c->add_option("--pretrained", pretrained_, "pre-trained checkpoint URI");
  c->add_option(
      "--finetuned", finetuned_,
      "fine-tuned checkpoint or LoRA adapter URI (repeatable: one per task)");
  c->add_option("--patch", patches_,
                "patch file from an earlier job, as a task (repeatable)");
  c->add_option(
      "--hessians", hessians_,
      "calibration file, paired in order with --finetuned (repeatable)");
  c->add_option("--label", labels_, "task labels, in task order (repeatable)");
  c->add_option(
      "--method", method_,
      "tailor|magnitude|task_arithmetic|ties|dare|spider|linear|slerp|"
      "dare_ties|breadcrumbs|della|model_stock (default tailor)");
  c->add_option(
      "--keep", keep_,
      "rho: fraction of fine-tuned entries kept, (0,1] (default 0.1)");
  c->add_option("--omega", omega_,
                "weight of salience vs sensitivity, [0,1] (default 0.5)");
  c->add_option("--scope", scope_,
                "selection scope: layer|row|block (default layer)");
  c->add_option("--normalize", normalize_,
                "score normalisation: minmax|zscore (default minmax)");
  c->add_option("--compensation", compensation_,
                "sequential|exact|none (default sequential)");
  c->add_option("--dead-columns", dead_columns_,
                "entries of inputs that are zero on every calibration row: "
                "revert (for free; the budget goes to live entries) | "
                "select (compete for it, SparseGPT's H_jj = 1) "
                "(default revert)");
  c->add_option("--damp", damp_, "Hessian damping lambda >= 0 (default 0.01)");
  c->add_option("--block-size", block_size_,
                "columns per OBS block (default 128)");
  c->add_flag("--float64", float64_,
              "run the kernel in float64 (default float32)");
  c->add_option(
      "--aggregate", aggregate_,
      "stitching: mean_selected|mean_all|sum (default mean_selected)");
  c->add_option("--lambda", lambda_,
                "task_arithmetic/ties/dare/dare_ties/breadcrumbs/della scale "
                "(default 1)");
  c->add_option("--density", density_,
                "ties, breadcrumbs, della: fraction kept per task (default "
                "0.2)");
  c->add_option("--drop", drop_,
                "dare, dare_ties: drop probability p in [0,1) (default 0.9)");
  c->add_option("--seed", seed_,
                "dare, dare_ties, della: random seed (default 0)");
  c->add_option("--weight", weights_,
                "linear, task_arithmetic, ties, dare_ties, breadcrumbs, della: "
                "task weight w_i, paired in order with the tasks (repeatable; "
                "default 1 each)");
  c->add_option("--normalize-weights", normalize_weights_,
                "true|false: divide by the sum of the weights (default: the "
                "method's mergekit default: linear, ties, della true; "
                "task_arithmetic, dare_ties, breadcrumbs false)");
  c->add_option("--t", t_,
                "slerp: interpolation factor in [0,1] from the pretrained "
                "checkpoint to the task (default 0.5)");
  c->add_option("--gamma", gamma_,
                "breadcrumbs: fraction of the largest |delta| dropped, [0,1) "
                "(default 0.01)");
  c->add_option("--epsilon", epsilon_,
                "della: keep probabilities span density +- epsilon (default "
                "0.15)");
  c->add_option(
      "--count-rule", count_rule_,
      "ties, breadcrumbs: round|floor: keep round(density*n) (default) "
      "or mergekit's int(density*n)");
  c->add_option(
      "--sign-cancel", sign_cancel_,
      "ties, dare_ties, della: zero|positive: where the trimmed values "
      "sum to exactly 0, write 0 (default) or elect + as mergekit");
  c->add_option(
      "--variant", variant_,
      "tailor: paper|authors-code: the paper's Model Tailor (default) or "
      "the loop of the authors' released code, for reproducing their "
      "numbers (its + sign raises the error; README): sets omega 0.8, "
      "scope block, normalize zscore, dead-columns select unless given");
  c->add_option("--include", include_,
                "RE2 regex searched for in tensor names: fuse only matching "
                "names (repeatable)");
  c->add_option("--exclude", exclude_,
                "RE2 regex: never fuse matching tensor names (repeatable)");
  c->add_option("--on-mismatch", on_mismatch_,
                "error|copy_base for tensors a task cannot be paired with "
                "(default error)");
  c->add_option("--out", out_, "output directory for the fused checkpoint");
  c->add_option("--patch-out", patch_out_,
                "stitched patch file (per-task patches are written beside it)");
  c->add_option("--report", report_, "JSON report path");
  c->add_flag("--overwrite", overwrite_, "replace existing outputs");
  c->add_option("--device", device_, "cpu|cuda|cuda:N|auto (default auto)");
  c->add_option(
      "--threads", threads_,
      "compute threads, 0..256: the size of the process's one compute pool "
      "(OpenBLAS's; LibTorch's intra-op pool is then 1) (default: "
      "the CPUs of the cgroup's quota / affinity mask)");
  c->add_option(
      "--workers", workers_,
      "tensors computed at once, 0..256, each with threads / workers (at "
      "least 1) OpenBLAS threads; outputs are identical for any count "
      "(default 0: one worker per compute thread, 1 thread each)");
  c->add_option("--allowed-root", allowed_roots_, kAllowedRootHelp);
  AddRemoteStorageFlags(c, &remote_, /*writes=*/true);
  c->add_flag("-q,--quiet", quiet_, "no progress bar");
  return c;
}

int FuseCommand::Run() {
  if (!local_ && !assemble_) {
    std::cerr
        << "tailorctl: error: fuse needs --local (to run the job on tailord, "
           "use `tailorctl submit -f job.yaml`)\n";
    return kExitUsage;
  }
  FusionSpec spec;
  if (!job_file_.empty()) {
    absl::StatusOr<FusionSpec> loaded = LoadJobFile(job_file_);
    if (!loaded.ok()) return ReportFailure(loaded.status());
    spec = *loaded;
  }
  auto given = [&](const char* flag) { return cmd_->count(flag) > 0; };
  auto apply = [&](const char* flag, auto parse, auto* field,
                   const std::string& text) {
    if (!given(flag)) return absl::OkStatus();
    auto parsed = parse(text);
    if (!parsed.ok()) return parsed.status();
    *field = *parsed;
    return absl::OkStatus();
  };
  if (given("--pretrained")) spec.pretrained_uri = pretrained_;
  if (given("--finetuned") || given("--patch") || given("--hessians") ||
      given("--label")) {
    absl::StatusOr<std::vector<TaskSpec>> tasks =
        TasksFromLists(finetuned_, patches_, hessians_, labels_);
    if (!tasks.ok()) return ReportFailure(tasks.status());
    spec.tasks = *tasks;
  }
  const Variant file_variant = spec.tailor.variant;
  for (absl::Status s :
       {apply("--method", ParseMethod, &spec.method, method_),
        apply("--scope", ParseScope, &spec.tailor.scope, scope_),
        apply("--normalize", ParseNormalization, &spec.tailor.normalization,
              normalize_),
        apply("--compensation", ParseCompensation, &spec.tailor.compensation,
              compensation_),
        apply("--dead-columns", ParseDeadColumns, &spec.tailor.dead_columns,
              dead_columns_),
        apply("--aggregate", ParseAggregation, &spec.aggregation, aggregate_),
        apply("--on-mismatch", ParseMismatchPolicy, &spec.on_mismatch,
              on_mismatch_),
        apply("--count-rule", ParseCountRule, &spec.count_rule, count_rule_),
        apply("--sign-cancel", ParseSignCancel, &spec.sign_cancel,
              sign_cancel_),
        apply("--variant", ParseVariant, &spec.tailor.variant, variant_)}) {
    if (!s.ok()) return ReportFailure(s);
  }
  // A flag's number replaces a job file's list over the layers as well.
  if (given("--keep")) {
    spec.tailor.keep_ratio = keep_;
    spec.gradients.keep.clear();
  }
  if (given("--omega")) {
    spec.tailor.omega = omega_;
    spec.gradients.omega.clear();
  }
  if (given("--variant") && file_variant != spec.tailor.variant) {
    // The variant's knobs, for those no flag gives (a job file that did not
    // ask for this variant has its replaced: the flag wins; one that did
    // had them resolved when it was read).
    ApplyVariantDefaults(
        [&](absl::string_view key) {
          return given(
              absl::StrCat("--", absl::StrReplaceAll(key, {{"_", "-"}}))
                  .c_str());
        },
        &spec.tailor);
  }
  if (given("--damp")) spec.tailor.damp = damp_;
  if (given("--block-size")) spec.tailor.block_size = block_size_;
  if (given("--float64")) spec.tailor.float64 = float64_;
  if (given("--lambda")) {
    spec.lambda = lambda_;
    spec.gradients.lambda.clear();
  }
  if (given("--density")) {
    spec.density = density_;
    spec.gradients.density.clear();
  }
  if (given("--drop")) spec.drop = drop_;
  if (given("--seed")) spec.seed = seed_;
  if (given("--t")) {
    spec.t = t_;
    spec.gradients.t.clear();
  }
  if (given("--gamma")) spec.gamma = gamma_;
  if (given("--epsilon")) spec.epsilon = epsilon_;
  if (given("--normalize-weights")) {
    spec.normalize_weights = normalize_weights_;
  }
  if (given("--weight")) {
    absl::Status s = ApplyWeights(weights_, &spec.tasks);
    if (!s.ok()) return ReportFailure(s);
  }
  if (given("--include")) spec.include = include_;
  if (given("--exclude")) spec.exclude = exclude_;
  if (given("--out")) spec.output_uri = out_;
  if (given("--patch-out")) spec.patch_uri = patch_out_;
  if (given("--report")) spec.report_uri = report_;
  if (given("--overwrite")) spec.overwrite = overwrite_;
  if (given("--device")) spec.device = device_;
  if (given("--threads")) spec.threads = threads_;
  if (workers_ < 0 || workers_ > 256) {
    return ReportFailure(absl::InvalidArgumentError(
        absl::StrCat("--workers: must be in 0..256, not ", workers_)));
  }
  // One compute pool per process, sized once and split into worker slots
  // (util/cpu_tuning.h); the allocator policy is the binary's choice.
  const ComputeThreads threads =
      ConfigureComputeThreads(spec.threads, workers_);
  ConfigureAllocatorForStreaming();

  absl::StatusOr<UriResolver> resolver =
      MakeCommandResolver(allowed_roots_, remote_);
  if (!resolver.ok()) return ReportFailure(resolver.status());
  ShardFlags shard_flags;
  shard_flags.assemble = assemble_;
  if (!assemble_ && given("--shard")) shard_flags.shard = shard_;
  if (given("--shards")) shard_flags.shards = shards_;
  shard_flags.dir = shard_dir_;
  absl::StatusOr<ShardOptions> shard =
      ResolveShardFlags(shard_flags, *resolver);
  if (!shard.ok()) return ReportFailure(shard.status());
  TerminalProgress progress(quiet_);
  RunOptions options;
  options.shard = *shard;
  options.progress = &progress;
  options.cancel = &g_cancel;
  options.workers = threads.workers;
  std::signal(SIGINT, OnInterrupt);
  std::signal(SIGTERM, OnInterrupt);
  // Missing parent directories of the outputs are created, beneath the
  // allowed roots (issue #17 point 1).
  // A shard writes none of the outputs.
  if (absl::StatusOr<OutputPlan> plan =
          ResolveOutputPlan(spec, *resolver, /*with_inputs=*/false);
      plan.ok() && shard->role != ShardOptions::Role::kShard) {
    absl::Status made = MakeOutputParents(*plan, *resolver);
    if (!made.ok()) return ReportFailure(made);
  }
  absl::StatusOr<nlohmann::json> report =
      RunFusionJob(spec, *resolver, options);
  if (shard->role == ShardOptions::Role::kAssemble && !shard->remote.empty()) {
    (void)RemoveAll(shard->dir);  // the bundles' local copy
  }
  if (!report.ok()) return ReportFailure(report.status());
  if (shard->role == ShardOptions::Role::kShard) {
    const nlohmann::json& s = (*report)["shard"];
    std::cout << absl::StrFormat(
        "shard %d of %d: %d fused tensors (%d resumed) in %s, plan %s\n",
        s["index"].get<int>(), s["count"].get<int>(),
        s["tensors"].get<int64_t>(), s["resumed_tensors"].get<int64_t>(),
        s["bundle"].get<std::string>(),
        s["plan_sha256"].get<std::string>().substr(0, 12));
    return kExitOk;
  }
  PrintSummary(*report);
  return kExitOk;
}

CLI::App* ApplyPatchCommand::Add(CLI::App& app) {
  CLI::App* c = app.add_subcommand(
      "apply-patch",
      "Rebuild a fused checkpoint from the pre-trained base and a patch "
      "(bit-identical to the fuse output that wrote the patch).");
  c->add_option("--pretrained", pretrained_, "pre-trained checkpoint URI")
      ->required();
  c->add_option("--patch", patch_, "patch file URI")->required();
  c->add_option("--out", out_, "output directory")->required();
  c->add_flag("--overwrite", overwrite_,
              "replace an existing output directory");
  c->add_option("--allowed-root", allowed_roots_, kAllowedRootHelp);
  AddRemoteStorageFlags(c, &remote_, /*writes=*/true);
  return c;
}

int ApplyPatchCommand::Run() {
  // The allocator policy is the binary's choice (ApplyPatch leaves it
  // alone): streaming keeps peak RSS at a few chunks over many tensors.
  ConfigureAllocatorForStreaming();
  absl::StatusOr<UriResolver> resolver =
      MakeCommandResolver(allowed_roots_, remote_);
  if (!resolver.ok()) return ReportFailure(resolver.status());
  if (absl::StatusOr<std::string> out = resolver->ResolveForWrite(out_);
      out.ok()) {
    absl::Status made = resolver->MakeParentDirectories(*out, "--out");
    if (!made.ok()) return ReportFailure(made);
  }
  absl::Status s = ApplyPatch(pretrained_, patch_, out_, overwrite_, *resolver);
  if (!s.ok()) return ReportFailure(s);
  std::cout << "wrote " << out_ << "\n";
  return kExitOk;
}

}  // namespace tailor::cli
