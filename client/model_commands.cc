#include "client/model_commands.h"

#include <ATen/Parallel.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <iostream>
#include <thread>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "client/exit_codes.h"
#include "client/remote_flags.h"
#include "demo/demo_report.h"
#include "demo/forgetting_demo.h"
#include "fusion/shard_plan.h"
#include "model/calibrate.h"
#include "model/calibration_merge.h"
#include "storage/uri_resolver.h"
#include "util/cpu_tuning.h"
#include "util/file_util.h"
#include "util/memory.h"

namespace tailor::cli {
namespace {

std::string DefaultDemoWorkdir() {
  if (const char* cache = getenv("XDG_CACHE_HOME"); cache && *cache) {
    return JoinPath(cache, "tailor/demo");
  }
  if (const char* home = getenv("HOME"); home && *home) {
    return JoinPath(home, ".cache/tailor/demo");
  }
  return "tailor-demo";
}

// Runs gnuplot on `script` when it is installed; false (with a note on
// stderr) otherwise.
bool RunGnuplot(const std::string& script) {
  const pid_t pid = fork();
  if (pid == 0) {
    execlp("gnuplot", "gnuplot", script.c_str(), static_cast<char*>(nullptr));
    _exit(127);
  }
  int status = 0;
  if (pid < 0 || waitpid(pid, &status, 0) != pid) return false;
  if (WIFEXITED(status) && WEXITSTATUS(status) == 127) {
    std::cerr << "tailorctl: gnuplot not found (Debian package gnuplot-nox); "
                 "plot script left at "
              << script << "\n";
    return false;
  }
  return WIFEXITED(status) && WEXITSTATUS(status) == 0;
}

void AddDeviceOptions(CLI::App& cmd, std::string& device, int& threads) {
  cmd.add_option("--device", device, "auto | cpu | cuda | cuda:N")
      ->capture_default_str();
  cmd.add_option("--threads", threads,
                 "intra-op CPU threads, also the size of OpenBLAS's pool (0: "
                 "LibTorch's default)")
      ->capture_default_str()
      ->check(CLI::NonNegativeNumber);
}

}  // namespace

CLI::App* CalibrateCommand::Add(CLI::App& app) {
  CLI::App* cmd = cmd_ = app.add_subcommand(
      "calibrate",
      "Collect calibration statistics: run a LLaMA-family checkpoint (Hugging "
      "Face layout with config.json) on token windows and write, for every "
      "linear layer, H = (2/n) X^T X of its inputs as a tailor-hessian/1 "
      "safetensors file (q/k/v and gate/up share one matrix through the "
      "aliases table). Use the fine-tuned model and target-task data.");
  cmd->add_option("--model", model_, "checkpoint directory (or file) URI");
  cmd->add_option("--data", data_,
                  "calibration data: a .safetensors file with one integer "
                  "tensor of token ids (1-D stream or 2-D [sequences, "
                  "tokens]), or any other file read as bytes (byte-level "
                  "vocabulary, as the demo models use)");
  cmd->add_option("--out", out_,
                  "calibration file to write (must not exist; a local path "
                  "or s3://bucket/key, uploaded once complete); --model, "
                  "--data and --out are required unless --merge");
  cmd->add_option("--shard", shard_,
                  "with --shards: calibrate on share I of the windows "
                  "(0 <= I < N, default $JOB_COMPLETION_INDEX), writing a "
                  "partial file with its own nsamples and a record of its "
                  "model and split for --merge");
  cmd->add_option("--shards", shards_, "split the windows into N shares");
  cmd->add_option("--merge", merge_,
                  "OUT PART...: write OUT from partial files of --shard "
                  "runs (their H weighted by nsamples, summed in float64; "
                  "keys, shapes and aliases must agree, and the parts must "
                  "be every shard, once, of one split of one model)")
      ->expected(2, 10001);
  cmd->add_option("--samples", samples_,
                  "windows to run (from a stream: evenly spaced)")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  cmd->add_option("--seq-len", seq_len_, "tokens per window")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  cmd->add_option("--batch-size", batch_size_, "windows per forward pass")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  AddDeviceOptions(*cmd, device_, threads_);
  cmd->add_option("--allowed-root", allowed_roots_,
                  "directory (or remote prefix, s3://bucket/prefix/, for the "
                  "model and data) the URIs must lie under (repeatable; "
                  "default: / and every remote URI); the model's files, its "
                  "config.json, the data "
                  "and the output are opened beneath it, so a symlink out of "
                  "it is refused (exit 5)");
  AddRemoteStorageFlags(cmd, &remote_, /*writes=*/true);
  cmd->add_flag("-q,--quiet", quiet_, "no progress on stderr");
  return cmd;
}

int CalibrateCommand::Run() {
  if (threads_ > 0) {
    at::set_num_threads(threads_);
    SetBlasThreads(threads_);
  }
  absl::StatusOr<UriResolver> resolver =
      MakeCommandResolver(allowed_roots_, remote_);
  if (!resolver.ok()) return ReportFailure(resolver.status());
  if (!merge_.empty()) {
    absl::StatusOr<std::string> out = resolver->ResolveForWrite(merge_[0]);
    if (!out.ok()) return ReportFailure(out.status());
    std::vector<std::string> parts;
    for (size_t i = 1; i < merge_.size(); ++i) {
      absl::StatusOr<std::string> p = resolver->ResolveExisting(merge_[i]);
      if (!p.ok()) return ReportFailure(p.status());
      parts.push_back(*p);
    }
    absl::Status merged = MergeCalibrationFiles(parts, *out, &*resolver);
    if (!merged.ok()) return ReportFailure(merged);
    std::cout << "wrote " << merge_[0] << " (" << parts.size() << " parts)\n";
    return kExitOk;
  }
  for (const auto& [flag, value] :
       {std::pair<const char*, const std::string*>{"--model", &model_},
        {"--data", &data_},
        {"--out", &out_}}) {
    if (value->empty()) {
      // A usage error, as CLI11's own "required" (exit 2).
      std::cerr << "tailorctl: error: " << flag
                << ": required (unless --merge)\n";
      return kExitUsage;
    }
  }
  CalibrateJob job;
  if (cmd_->count("--shard") > 0 && cmd_->count("--shards") == 0) {
    std::cerr << "tailorctl: error: --shards: required with --shard\n";
    return kExitUsage;
  }
  if (cmd_->count("--shards") > 0) {
    int index = shard_;
    if (cmd_->count("--shard") == 0) {
      const char* env = std::getenv("JOB_COMPLETION_INDEX");
      if (env == nullptr || !absl::SimpleAtoi(env, &index)) {
        return ReportFailure(absl::InvalidArgumentError(
            "--shard: not given and $JOB_COMPLETION_INDEX is not set to an "
            "integer"));
      }
    }
    absl::Status valid = ValidateShardIndex(
        index, shards_,
        cmd_->count("--shard") > 0 ? "--shard" : "$JOB_COMPLETION_INDEX",
        "--shards");
    if (!valid.ok()) return ReportFailure(valid);
    job.shard_index = index;
    job.shard_count = shards_;
  }
  job.model_uri = model_;
  job.data_uri = data_;
  job.out_uri = out_;
  job.samples = samples_;
  job.seq_len = seq_len_;
  job.device = device_;
  job.options.batch_size = batch_size_;
  const bool tty = !quiet_ && ::isatty(2);
  if (tty) {
    job.options.on_progress = [](int64_t done, int64_t total) {
      std::cerr << absl::StrFormat("\r\033[Kcalibrating: %d/%d windows", done,
                                   total)
                << std::flush;
    };
  }
  absl::Status status = RunCalibrateJob(job, *resolver);
  if (tty) std::cerr << "\r\033[K";
  if (!status.ok()) return ReportFailure(status);
  std::cout << absl::StrFormat("wrote %s (%d windows x %d tokens)\n", out_,
                               samples_, seq_len_);
  return kExitOk;
}

CLI::App* DemoCommand::Add(CLI::App& app) {
  CLI::App* cmd = app.add_subcommand(
      "demo",
      "The forgetting benchmark on real text: pre-train a byte-level LLaMA on "
      "English prose (A), fine-tune it on Python (B) and C (C) source, fuse "
      "back with every method at rho = 10% (Model Tailor, magnitude, DARE, "
      "TIES, task arithmetic, linear, SLERP, DARE-TIES, breadcrumbs, DELLA, "
      "Model Stock; and a rho x omega sweep, and a B + C stitch), and print "
      "the paper-style tables (accuracy on held-out A and B, Avg, H-score, "
      "retention). Trained checkpoints are cached in "
      "the work directory, keyed by the configuration.");
  cmd->add_flag(
      "--quick", quick_,
      "small preset for tests (2 layers, hidden 64, 64-token windows, "
      "256 KiB corpora; same steps and rates; the partial table without the "
      "mergekit-family rows)");
  cmd->add_option("--json", json_, "also write the report as JSON here");
  cmd->add_option("--workdir", workdir_,
                  "cache and outputs (default: $XDG_CACHE_HOME/tailor/demo or "
                  "~/.cache/tailor/demo)");
  AddDeviceOptions(*cmd, device_, threads_);
  cmd->add_option("--jobs", jobs_,
                  "fusion jobs run (and scored) at once; the results do not "
                  "depend on it (0: CPU cores / intra-op threads)")
      ->capture_default_str()
      ->check(CLI::NonNegativeNumber);
  cmd->add_flag("--rescore", rescore_,
                "evaluate every model afresh (by default a checkpoint whose "
                "files are byte-identical to one scored before reuses its "
                "scores; fusion jobs always run)");
  cmd->add_flag("--no-plot", no_plot_,
                "skip the trade-off plot (otherwise gnuplot draws "
                "tradeoff.png in the work directory when installed)");
  cmd->add_flag("-q,--quiet", quiet_, "no progress lines on stderr");
  return cmd;
}

int DemoCommand::Run() {
  if (threads_ > 0) at::set_num_threads(threads_);
  // One knob for both pools (so --jobs does not change the arithmetic), and
  // a heap that reuses the per-batch activations: together they halve a
  // warm run on 2 cores.
  SetBlasThreads(at::get_num_threads());
  ConfigureAllocatorForReuse();
  DemoOptions options;
  options.preset = quick_ ? QuickDemoPreset() : FullDemoPreset();
  options.workdir = workdir_.empty() ? DefaultDemoWorkdir() : workdir_;
  options.device = device_;
  options.jobs = jobs_;
  options.reuse_scores = !rescore_;
  if (options.jobs == 0) {
    const int cores = static_cast<int>(std::thread::hardware_concurrency());
    options.jobs = std::max(1, cores / std::max(1, at::get_num_threads()));
  }
  if (!quiet_) {
    options.log = [](const std::string& line) {
      std::cerr << "demo: " << line << "\n";
    };
  }
  absl::StatusOr<nlohmann::json> report = RunForgettingDemo(options);
  if (!report.ok()) return ReportFailure(report.status());
  if (!no_plot_ && report->contains("sweep")) {
    const std::string dir = (*report)["workdir"].get<std::string>();
    absl::StatusOr<std::string> script = WriteTradeoffPlotScript(*report, dir);
    if (!script.ok()) return ReportFailure(script.status());
    if (RunGnuplot(*script)) {
      (*report)["plot"] = JoinPath(dir, "tradeoff.png");
    }
  }
  std::cout << FormatDemoTables(*report);
  std::cout << absl::StrFormat(
      "\ndevice %s, %d thread(s); %.1f s in all (work directory %s)\n",
      (*report)["device"].get<std::string>(), (*report)["threads"].get<int>(),
      (*report)["seconds"]["total"].get<double>(),
      (*report)["workdir"].get<std::string>());
  if (rescore_) {
    std::cout << absl::StrFormat(
        "%d checkpoint(s) evaluated (--rescore)\n",
        (*report)["score_memo"]["misses"].get<int64_t>());
  } else if (report->contains("score_memo")) {
    const nlohmann::json& memo = (*report)["score_memo"];
    std::cout << absl::StrFormat(
        "%d checkpoint(s) evaluated, %d byte-identical to one scored before "
        "(scores reused; --rescore to evaluate them again)\n",
        memo["misses"].get<int64_t>(), memo["hits"].get<int64_t>());
  }
  if (report->contains("plot")) {
    std::cout << "trade-off plot: " << (*report)["plot"].get<std::string>()
              << "\n";
  }
  if (!json_.empty()) {
    absl::Status status = WriteFileAtomically(json_, report->dump(2) + "\n");
    if (!status.ok()) return ReportFailure(status);
  }
  return kExitOk;
}

}  // namespace tailor::cli
