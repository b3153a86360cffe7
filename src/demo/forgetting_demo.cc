#include "demo/forgetting_demo.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <map>
#include <memory>
#include <optional>
#include <thread>
#include <tuple>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_replace.h"
#include "absl/synchronization/mutex.h"
#include "fusion/fusion_job.h"
#include "fusion/fusion_spec.h"
#include "io/checkpoint.h"
#include "model/calibrate.h"
#include "model/llama.h"
#include "storage/uri_resolver.h"
#include "util/device.h"
#include "util/file_util.h"
#include "util/json_util.h"
#include "util/sha256.h"
#include "util/status_macros.h"
#include "util/torch_status.h"

namespace tailor {
namespace {

using Clock = std::chrono::steady_clock;

// Bump when the scenario's code changes what a cached artifact holds.
constexpr int kCacheVersion = 1;
// Bump when Evaluate changes what a memoized score means.
constexpr int kScoreVersion = 1;

double Seconds(Clock::time_point since) {
  return std::chrono::duration<double>(Clock::now() - since).count();
}

nlohmann::json TrainJson(const TrainOptions& o) {
  return {{"steps", o.steps},
          {"batch_size", o.batch_size},
          {"seq_len", o.seq_len},
          {"lr", o.lr},
          {"min_lr_ratio", o.min_lr_ratio},
          {"warmup_steps", o.warmup_steps},
          {"weight_decay", o.weight_decay},
          {"beta1", o.beta1},
          {"beta2", o.beta2},
          {"grad_clip", o.grad_clip},
          {"seed", o.seed}};
}

double HarmonicMean(double a, double b) {
  return a + b > 0 ? 2 * a * b / (a + b) : 0.0;
}

nlohmann::json EvalJson(const EvalResult& r) {
  return {{"accuracy", 100.0 * r.accuracy},
          {"perplexity", r.perplexity},
          {"loss", r.loss},
          {"tokens", r.tokens}};
}

// SHA-256 over a checkpoint directory's regular files: names, sizes, bytes.
// Demo checkpoints are a few MiB.
absl::StatusOr<std::string> CheckpointDigest(const std::string& dir) {
  TAILOR_ASSIGN_OR_RETURN(std::vector<std::string> names, ListDirectory(dir));
  Sha256 sha;
  for (const std::string& name : names) {
    const std::string path = JoinPath(dir, name);
    if (!IsRegularFile(path)) continue;
    TAILOR_ASSIGN_OR_RETURN(std::string bytes,
                            ReadFileToString(path, uint64_t{1} << 32));
    sha.Update(absl::StrCat(name, "\n", bytes.size(), "\n"));
    sha.Update(bytes);
  }
  return sha.FinalHex();
}

// One task of the scenario: a corpus and its held-out windows.
struct Task {
  std::string key;  // "A" | "B" | "C"
  ByteCorpus corpus;
  at::Tensor eval_windows;
};

class Demo {
 public:
  explicit Demo(const DemoOptions& options)
      : options_(options), preset_(options.preset) {}

  absl::StatusOr<nlohmann::json> Run() {
    const Clock::time_point start = Clock::now();
    TAILOR_ASSIGN_OR_RETURN(device_, ResolveDevice(options_.device));
    TAILOR_RETURN_IF_ERROR(Setup());
    TAILOR_ASSIGN_OR_RETURN(UriResolver resolver,
                            UriResolver::Create({options_.workdir}));
    resolver_ = std::make_unique<UriResolver>(std::move(resolver));

    // Models: pre-trained on A; fine-tuned on B (full and partial) and C.
    TAILOR_RETURN_IF_ERROR(
        EnsureModel("pretrained", "", "A", preset_.pretrain, nullptr, ""));
    TAILOR_RETURN_IF_ERROR(
        EnsureModel("ft-B", "pretrained", "B", preset_.finetune, nullptr, ""));
    if (preset_.partial) {
      const int64_t first =
          preset_.model.num_hidden_layers - preset_.partial_layers;
      auto last_layers = [first](const std::string& name) {
        int64_t layer = -1;
        return std::sscanf(name.c_str(), "model.layers.%ld.", &layer) == 1 &&
               layer >= first;
      };
      TAILOR_RETURN_IF_ERROR(EnsureModel("ft-B-partial", "pretrained", "B",
                                         preset_.finetune_partial, last_layers,
                                         absl::StrCat("layers >= ", first)));
    }
    if (preset_.multitask) {
      TAILOR_RETURN_IF_ERROR(EnsureModel("ft-C", "pretrained", "C",
                                         preset_.finetune, nullptr, ""));
    }
    TAILOR_RETURN_IF_ERROR(EnsureHessians("ft-B", "B"));
    if (preset_.partial) {
      TAILOR_RETURN_IF_ERROR(EnsureHessians("ft-B-partial", "B"));
    }
    if (preset_.multitask) TAILOR_RETURN_IF_ERROR(EnsureHessians("ft-C", "C"));
    for (const auto& [name, dir] : model_dirs_) {
      report_["models"][name] = {
          {"checkpoint", dir},
          {"hessians",
           model_keys_.count(name) && IsRegularFile(HessianPath(name))
               ? HessianPath(name)
               : ""}};
    }

    const Clock::time_point fuse_start = Clock::now();
    nlohmann::json single = nlohmann::json::array();
    TAILOR_ASSIGN_OR_RETURN(nlohmann::json full, SingleTask("full", "ft-B"));
    single.push_back(std::move(full));
    if (preset_.partial) {
      TAILOR_ASSIGN_OR_RETURN(nlohmann::json partial,
                              SingleTask("partial", "ft-B-partial"));
      single.push_back(std::move(partial));
    }
    report_["single_task"] = std::move(single);
    if (!preset_.sweep_keep.empty() && !preset_.sweep_omega.empty()) {
      TAILOR_ASSIGN_OR_RETURN(report_["sweep"], Sweep());
    }
    if (preset_.multitask) {
      TAILOR_ASSIGN_OR_RETURN(report_["multi_task"], MultiTask());
    }
    seconds_["fuse_and_evaluate"] = Seconds(fuse_start);
    {
      absl::MutexLock lock(&mu_);
      seconds_["fusion_jobs"] = fuse_seconds_;
      seconds_["evaluation"] = evaluate_seconds_;
      report_["fusion_jobs"] = fusion_jobs_;
      report_["score_memo"] = {{"hits", score_memo_hits_},
                               {"misses", score_memo_misses_}};
    }
    report_["jobs"] = options_.jobs;
    seconds_["total"] = Seconds(start);
    report_["seconds"] = seconds_;
    return report_;
  }

 private:
  void Log(const std::string& line) const {
    if (options_.log) options_.log(line);
  }

  const std::string& pretrained_dir() const {
    return model_dirs_.at("pretrained");
  }

  absl::Status Setup() {
    if (preset_.model.vocab_size != kByteLevelVocabSize) {
      return absl::InvalidArgumentError(
          absl::StrCat("demo preset: vocab_size must be ", kByteLevelVocabSize,
                       " (byte-level)"));
    }
    TAILOR_RETURN_IF_ERROR(preset_.model.Validate());
    if (preset_.partial_layers < 1 ||
        preset_.partial_layers > preset_.model.num_hidden_layers) {
      return absl::InvalidArgumentError(
          "demo preset: partial_layers must be in [1, num_hidden_layers]");
    }
    TAILOR_ASSIGN_OR_RETURN(CorpusSource a, ProseCorpusSource());
    TAILOR_ASSIGN_OR_RETURN(CorpusSource b, PythonCorpusSource());
    std::vector<std::pair<std::string, CorpusSource>> sources = {{"A", a},
                                                                 {"B", b}};
    if (preset_.multitask) {
      TAILOR_ASSIGN_OR_RETURN(CorpusSource c, CCorpusSource());
      sources.emplace_back("C", c);
    }
    nlohmann::json corpora = nlohmann::json::object();
    nlohmann::json key = {{"version", kCacheVersion},
                          {"preset", preset_.ToJson()}};
    for (auto& [task_key, source] : sources) {
      TAILOR_ASSIGN_OR_RETURN(ByteCorpus corpus,
                              ByteCorpus::Load(source, preset_.corpus));
      Task task{task_key, std::move(corpus), at::Tensor()};
      task.eval_windows = ByteCorpus::Windows(
          task.corpus.heldout(), preset_.eval_seq_len, preset_.eval_windows);
      if (task.eval_windows.size(0) < 1) {
        return absl::InvalidArgumentError(
            absl::StrCat("corpus '", task.corpus.name(),
                         "': held-out stream shorter than one window"));
      }
      corpora[task_key] = {{"name", task.corpus.name()},
                           {"description", task.corpus.description()},
                           {"files", task.corpus.files_used()},
                           {"train_tokens", task.corpus.train().numel()},
                           {"heldout_tokens", task.corpus.heldout().numel()},
                           {"eval_tokens", task.eval_windows.numel()},
                           {"digest", task.corpus.digest()}};
      key["corpora"][task_key] = task.corpus.digest();
      tasks_.emplace(task_key, std::move(task));
    }
    if (!IsDirectory(options_.workdir)) {
      TAILOR_RETURN_IF_ERROR(MakeDirectories(options_.workdir));
    }
    cache_dir_ = JoinPath(
        options_.workdir,
        absl::StrCat(preset_.name, "-", Sha256Hex(key.dump()).substr(0, 16)));
    if (!IsDirectory(cache_dir_)) {
      TAILOR_RETURN_IF_ERROR(MakeDirectories(cache_dir_));
    }
    TAILOR_RETURN_IF_ERROR(RemoveAll(JoinPath(cache_dir_, "fused")));
    TAILOR_RETURN_IF_ERROR(MakeDirectories(JoinPath(cache_dir_, "fused")));
    TAILOR_RETURN_IF_ERROR(MakeDirectories(JoinPath(cache_dir_, "scores")));
    report_["preset"] = preset_.ToJson();
    report_["device"] = device_.str();
    report_["threads"] = at::get_num_threads();
    report_["workdir"] = cache_dir_;
    report_["corpora"] = corpora;
    Log(absl::StrCat("work directory ", cache_dir_));
    return absl::OkStatus();
  }

  // Trains (or finds cached) the model `name`: from the model `parent`
  // (empty: a fresh init) on task `task_key`. The cache entry is keyed by
  // the model's whole lineage (parents' keys, corpora, training options), so
  // changing one step retrains only what depends on it.
  absl::Status EnsureModel(const std::string& name, const std::string& parent,
                           const std::string& task_key,
                           const TrainOptions& train,
                           std::function<bool(const std::string&)> trainable,
                           const std::string& trainable_description) {
    const Task& task = tasks_.at(task_key);
    nlohmann::json lineage = {{"version", kCacheVersion},
                              {"corpus", task.corpus.digest()},
                              {"train", TrainJson(train)},
                              {"trainable", trainable_description}};
    if (parent.empty()) {
      lineage["init"] = {{"model", preset_.model.ToJson()},
                         {"seed", preset_.init_seed}};
    } else {
      lineage["parent"] = model_keys_.at(parent);
    }
    model_keys_[name] = Sha256Hex(lineage.dump()).substr(0, 16);
    const std::string dir =
        JoinPath(JoinPath(options_.workdir, "models"),
                 absl::StrCat(name, "-", model_keys_[name]));
    const std::string log_path = dir + ".train.json";
    model_dirs_[name] = dir;
    if (IsDirectory(dir) && IsRegularFile(log_path)) {
      TAILOR_ASSIGN_OR_RETURN(std::string text,
                              ReadFileToString(log_path, 1 << 20));
      nlohmann::json entry = nlohmann::json::parse(text, nullptr, false);
      if (!entry.is_discarded()) {
        entry["cached"] = true;
        report_["training"][name] = entry;
        Log(absl::StrCat(name, ": cached"));
        return absl::OkStatus();
      }
    }
    TAILOR_RETURN_IF_ERROR(RemoveAll(dir));
    TAILOR_RETURN_IF_ERROR(MakeDirectories(Dirname(dir)));
    std::optional<LlamaModel> model;
    if (parent.empty()) {
      TAILOR_ASSIGN_OR_RETURN(
          model, LlamaModel::Init(preset_.model, preset_.init_seed, at::kFloat,
                                  device_));
    } else {
      TAILOR_ASSIGN_OR_RETURN(model, LoadModel(model_dirs_.at(parent)));
    }
    TrainOptions options = train;
    options.trainable = std::move(trainable);
    options.on_log = [&](int64_t step, double loss) {
      Log(absl::StrFormat("%s: step %d/%d loss %.4f (%s)", name, step,
                          options.steps, loss, task.corpus.name()));
    };
    Log(absl::StrCat(name, ": training on ", task.corpus.name(), " (",
                     options.steps, " steps)"));
    TAILOR_ASSIGN_OR_RETURN(TrainResult result,
                            Train(*model, task.corpus, options));
    LlamaSaveOptions save;
    save.dtype = DType::kF32;
    TAILOR_RETURN_IF_ERROR(model->Save(dir, save));
    nlohmann::json entry = {
        {"task", task_key},
        {"corpus", task.corpus.name()},
        {"final_loss", result.final_loss},
        {"trainable_parameters", result.trainable_parameters},
        {"seconds", result.seconds}};
    TAILOR_RETURN_IF_ERROR(WriteFileAtomically(log_path, entry.dump(2) + "\n"));
    entry["cached"] = false;
    report_["training"][name] = entry;
    seconds_[absl::StrCat("train_", name)] = result.seconds;
    return absl::OkStatus();
  }

  absl::StatusOr<LlamaModel> LoadModel(const std::string& dir) const {
    TAILOR_ASSIGN_OR_RETURN(std::unique_ptr<Checkpoint> ckpt,
                            Checkpoint::Open(dir));
    return LlamaModel::Load(*ckpt, preset_.model, device_, at::kFloat);
  }

  std::string HessianPath(const std::string& model_name) const {
    return absl::StrCat(model_dirs_.at(model_name), ".hessians-",
                        preset_.calib_samples, "x", preset_.calib_seq_len,
                        ".safetensors");
  }

  absl::Status EnsureHessians(const std::string& model_name,
                              const std::string& task_key) {
    const std::string path = HessianPath(model_name);
    if (IsRegularFile(path)) return absl::OkStatus();
    const Clock::time_point start = Clock::now();
    TAILOR_ASSIGN_OR_RETURN(LlamaModel model,
                            LoadModel(model_dirs_.at(model_name)));
    const at::Tensor windows =
        EvenlySpacedWindows(tasks_.at(task_key).corpus.train(),
                            preset_.calib_samples, preset_.calib_seq_len);
    TAILOR_RETURN_IF_ERROR(WriteCalibration(model, windows, path));
    seconds_[absl::StrCat("calibrate_", model_name)] = Seconds(start);
    Log(absl::StrCat(model_name, ": calibration written (",
                     preset_.calib_samples, " x ", preset_.calib_seq_len,
                     " tokens)"));
    return absl::OkStatus();
  }

  // Scores of a trained model (pre-trained or fine-tuned) on the given
  // tasks, remembered for the run: they appear in several tables.
  absl::StatusOr<nlohmann::json> Score(const std::string& dir,
                                       const std::vector<std::string>& keys) {
    nlohmann::json out = nlohmann::json::object();
    std::vector<std::string> missing;
    for (const std::string& key : keys) {
      auto it = trained_scores_.find({dir, key});
      if (it != trained_scores_.end()) {
        out[key] = it->second;
      } else {
        missing.push_back(key);
      }
    }
    if (missing.empty()) return out;
    TAILOR_ASSIGN_OR_RETURN(nlohmann::json fresh, ScoreFused(dir, missing));
    for (const std::string& key : missing) {
      out[key] = fresh[key];
      trained_scores_[{dir, key}] = fresh[key];
    }
    return out;
  }

  // Scores of any checkpoint directory on `keys`. The evaluation windows
  // are fixed by the preset (cache_dir_ is keyed by it), so the scores are
  // a function of the checkpoint's bytes and the device: they are memoized
  // in scores/<sha256 of the files>-<device>.json. Thread-safe.
  absl::StatusOr<nlohmann::json> ScoreFused(
      const std::string& dir, const std::vector<std::string>& keys) {
    TAILOR_ASSIGN_OR_RETURN(std::string digest, CheckpointDigest(dir));
    const std::string memo_path =
        JoinPath(JoinPath(cache_dir_, "scores"),
                 absl::StrCat("v", kScoreVersion, "-", digest, "-",
                              absl::StrReplaceAll(device_.str(), {{":", "_"}}),
                              ".json"));
    nlohmann::json memo = nlohmann::json::object();
    if (IsRegularFile(memo_path)) {
      // A memo that cannot be read is recomputed and rewritten.
      absl::StatusOr<std::string> text = ReadFileToString(memo_path, 1 << 20);
      if (text.ok()) {
        absl::StatusOr<nlohmann::json> read = ParseJsonStrict(*text, memo_path);
        if (read.ok() && read->is_object()) memo = *std::move(read);
      }
    }
    std::vector<std::string> missing;
    for (const std::string& key : keys) {
      if (!options_.reuse_scores || !memo.contains(key)) missing.push_back(key);
    }
    if (missing.empty()) {
      absl::MutexLock lock(&mu_);
      ++score_memo_hits_;
    } else {
      const Clock::time_point start = Clock::now();
      TAILOR_ASSIGN_OR_RETURN(LlamaModel model, LoadModel(dir));
      for (const std::string& key : missing) {
        TAILOR_ASSIGN_OR_RETURN(EvalResult r,
                                Evaluate(model, tasks_.at(key).eval_windows));
        memo[key] = EvalJson(r);
      }
      TAILOR_RETURN_IF_ERROR(
          WriteFileAtomically(memo_path, memo.dump(1) + "\n"));
      absl::MutexLock lock(&mu_);
      evaluate_seconds_ += Seconds(start);
      ++score_memo_misses_;
    }
    nlohmann::json out = nlohmann::json::object();
    for (const std::string& key : keys) out[key] = memo[key];
    return out;
  }

  FusionSpec BaseSpec(const std::string& out_dir) const {
    FusionSpec spec;
    spec.pretrained_uri = pretrained_dir();
    spec.output_uri = out_dir;
    spec.overwrite = true;
    spec.device = device_.is_cuda() ? device_.str() : "cpu";
    spec.tailor.keep_ratio = preset_.keep;
    spec.tailor.omega = preset_.omega;
    spec.lambda = 1.0;
    spec.density = preset_.ties_density;
    spec.drop = preset_.dare_drop;
    spec.seed = 0;
    return spec;
  }

  // One fusion to run and score.
  struct FusionRow {
    std::string method;  // row label
    std::string slug;    // fused/<slug>
    FusionSpec spec;
    bool keep_output = false;  // leave the fused checkpoint on disk
  };

  // Runs a fusion job into fused/<slug> and scores it on `keys`; the fused
  // checkpoint is removed afterwards unless row.keep_output. Thread-safe.
  absl::StatusOr<nlohmann::json> FuseAndScore(
      FusionRow row, const std::vector<std::string>& keys) {
    const std::string out = JoinPath(JoinPath(cache_dir_, "fused"), row.slug);
    row.spec.output_uri = out;
    const Clock::time_point start = Clock::now();
    TAILOR_ASSIGN_OR_RETURN(nlohmann::json job,
                            RunFusionJob(row.spec, *resolver_));
    const double fuse_seconds = Seconds(start);
    TAILOR_ASSIGN_OR_RETURN(nlohmann::json scores, ScoreFused(out, keys));
    if (!row.keep_output) TAILOR_RETURN_IF_ERROR(RemoveAll(out));
    {
      absl::MutexLock lock(&mu_);
      fuse_seconds_ += fuse_seconds;
      ++fusion_jobs_;
    }
    const nlohmann::json& totals = job["totals"];
    scores["method"] = row.method;
    scores["kept_fraction"] = totals.value("kept_fraction", 0.0);
    if (totals.contains("error_reduction") &&
        totals["error_reduction"].is_number()) {
      scores["error_reduction"] = totals["error_reduction"];
    }
    return scores;
  }

  // FuseAndScore over `rows` on options_.jobs worker threads; results in
  // the rows' order (each row's result depends only on its spec, so the
  // schedule changes nothing but the time). The first error wins.
  absl::StatusOr<std::vector<nlohmann::json>> FuseAndScoreAll(
      const std::vector<FusionRow>& rows,
      const std::vector<std::string>& keys) {
    std::vector<absl::StatusOr<nlohmann::json>> results(
        rows.size(), absl::UnknownError("not run"));
    std::atomic<size_t> next{0};
    auto worker = [&] {
      for (size_t i = next++; i < rows.size(); i = next++) {
        results[i] = FuseAndScore(rows[i], keys);
      }
    };
    const int workers = std::max(
        1, std::min<int>(options_.jobs, static_cast<int>(rows.size())));
    std::vector<std::thread> threads;
    for (int w = 1; w < workers; ++w) threads.emplace_back(worker);
    worker();
    for (std::thread& t : threads) t.join();
    std::vector<nlohmann::json> out;
    for (auto& r : results) {
      if (!r.ok()) return r.status();
      out.push_back(*std::move(r));
    }
    return out;
  }

  // Adds avg, h_score and retention (accuracies in percent) to a row.
  void Summarise(nlohmann::json& row, double zero_shot_a,
                 double finetuned_b) const {
    const double a = row["A"]["accuracy"].get<double>();
    const double b = row["B"]["accuracy"].get<double>();
    row["avg"] = (a + b) / 2;
    row["h_score"] = HarmonicMean(a, b);
    row["retention_a"] = 100.0 * a / zero_shot_a;
    row["retention_b"] = 100.0 * b / finetuned_b;
  }

  TaskSpec TaskFor(const std::string& label, const std::string& ft_name,
                   bool with_hessians) const {
    TaskSpec t;
    t.label = label;
    t.finetuned_uri = model_dirs_.at(ft_name);
    if (with_hessians) t.hessian_uri = HessianPath(ft_name);
    return t;
  }

  // The baselines' knobs (DemoPreset) on `tasks`, without Hessians.
  FusionSpec BaselineSpec(Method method, std::vector<TaskSpec> tasks) const {
    FusionSpec spec = BaseSpec("");
    spec.method = method;
    spec.tasks = std::move(tasks);
    for (TaskSpec& t : spec.tasks) t.hessian_uri.clear();
    if (method == Method::kTaskArithmetic) {
      spec.lambda = preset_.task_arithmetic_lambda;
    }
    return spec;
  }

  absl::StatusOr<nlohmann::json> SingleTask(const std::string& setting,
                                            const std::string& ft_name) {
    Log(absl::StrCat("single task (", setting, " fine-tune): fusing"));
    const std::vector<std::string> keys = {"A", "B"};
    TAILOR_ASSIGN_OR_RETURN(nlohmann::json zero_shot,
                            Score(pretrained_dir(), keys));
    TAILOR_ASSIGN_OR_RETURN(nlohmann::json finetuned,
                            Score(model_dirs_.at(ft_name), keys));
    zero_shot["method"] = "zero-shot";
    finetuned["method"] = "fine-tuned";
    const TaskSpec task = TaskFor("B", ft_name, /*with_hessians=*/true);

    std::vector<FusionRow> fusions;
    auto tailor = [&](const std::string& method, const std::string& slug,
                      Method engine, Compensation compensation) {
      FusionRow row{method, absl::StrCat(setting, "-", slug), BaseSpec(""),
                    /*keep_output=*/engine == Method::kTailor};
      row.spec.method = engine;
      row.spec.tailor.compensation = compensation;
      row.spec.tasks = {task};
      if (engine != Method::kTailor) row.spec.tasks[0].hessian_uri.clear();
      fusions.push_back(std::move(row));
    };
    tailor("magnitude", "magnitude", Method::kMagnitude, Compensation::kNone);
    tailor("tailor (sequential)", "tailor-seq", Method::kTailor,
           Compensation::kSequential);
    tailor("tailor (exact)", "tailor-exact", Method::kTailor,
           Compensation::kExact);
    for (const auto& [method, slug, engine] :
         std::vector<std::tuple<std::string, std::string, Method>>{
             {"dare", "dare", Method::kDare},
             {"ties", "ties", Method::kTies},
             {"task arithmetic", "task-arithmetic", Method::kTaskArithmetic}}) {
      fusions.push_back(FusionRow{method, absl::StrCat(setting, "-", slug),
                                  BaselineSpec(engine, {task}), false});
    }
    TAILOR_ASSIGN_OR_RETURN(std::vector<nlohmann::json> fused,
                            FuseAndScoreAll(fusions, keys));
    nlohmann::json rows = nlohmann::json::array({zero_shot, finetuned});
    for (nlohmann::json& row : fused) rows.push_back(std::move(row));
    const double zero_a = zero_shot["A"]["accuracy"].get<double>();
    const double ft_b = finetuned["B"]["accuracy"].get<double>();
    for (nlohmann::json& row : rows) Summarise(row, zero_a, ft_b);
    return nlohmann::json{{"setting", setting},
                          {"finetuned", ft_name},
                          {"keep", preset_.keep},
                          {"omega", preset_.omega},
                          {"rows", rows}};
  }

  absl::StatusOr<nlohmann::json> Sweep() {
    Log("sweep: tailor (sequential) over rho x omega");
    const nlohmann::json& full = report_["single_task"][0]["rows"];
    const double zero_a = full[0]["A"]["accuracy"].get<double>();
    const double ft_b = full[1]["B"]["accuracy"].get<double>();
    const TaskSpec task = TaskFor("B", "ft-B", /*with_hessians=*/true);
    std::vector<FusionRow> fusions;
    for (double keep : preset_.sweep_keep) {
      for (double omega : preset_.sweep_omega) {
        FusionRow row{"tailor (sequential)",
                      absl::StrFormat("sweep-%g-%g", keep, omega), BaseSpec(""),
                      false};
        row.spec.tailor.keep_ratio = keep;
        row.spec.tailor.omega = omega;
        row.spec.tasks = {task};
        fusions.push_back(std::move(row));
      }
    }
    TAILOR_ASSIGN_OR_RETURN(std::vector<nlohmann::json> points,
                            FuseAndScoreAll(fusions, {"A", "B"}));
    for (size_t i = 0; i < points.size(); ++i) {
      points[i]["keep"] = fusions[i].spec.tailor.keep_ratio;
      points[i]["omega"] = fusions[i].spec.tailor.omega;
      Summarise(points[i], zero_a, ft_b);
    }
    return nlohmann::json(points);
  }

  absl::StatusOr<nlohmann::json> MultiTask() {
    Log("multi-task: B + C");
    const std::vector<std::string> keys = {"A", "B", "C"};
    const TaskSpec b = TaskFor("B", "ft-B", /*with_hessians=*/true);
    const TaskSpec c = TaskFor("C", "ft-C", /*with_hessians=*/true);
    nlohmann::json rows = nlohmann::json::array();
    for (const auto& [method, name] :
         std::vector<std::pair<std::string, std::string>>{
             {"zero-shot", "pretrained"},
             {"fine-tuned B", "ft-B"},
             {"fine-tuned C", "ft-C"}}) {
      TAILOR_ASSIGN_OR_RETURN(nlohmann::json row,
                              Score(model_dirs_.at(name), keys));
      row["method"] = method;
      rows.push_back(std::move(row));
    }
    const std::string pct =
        absl::StrFormat("%g%%", 100 * preset_.multitask_keep);
    std::vector<FusionRow> fusions;
    auto tailor = [&](const std::string& method, const std::string& slug,
                      std::vector<TaskSpec> tasks, bool keep_output) {
      FusionRow row{method, slug, BaseSpec(""), keep_output};
      row.spec.tailor.keep_ratio = preset_.multitask_keep;
      row.spec.tasks = std::move(tasks);
      fusions.push_back(std::move(row));
    };
    tailor(absl::StrCat("tailor B (", pct, ")"), "multi-tailor-B", {b}, false);
    tailor(absl::StrCat("tailor C (", pct, ")"), "multi-tailor-C", {c}, false);
    tailor(absl::StrCat("tailor B+C stitched (", pct, " each)"),
           "multi-tailor-stitched", {b, c}, true);
    for (const auto& [method, slug, engine] :
         std::vector<std::tuple<std::string, std::string, Method>>{
             {"dare B+C", "multi-dare", Method::kDare},
             {"ties B+C", "multi-ties", Method::kTies},
             {"task arithmetic B+C", "multi-task-arithmetic",
              Method::kTaskArithmetic}}) {
      fusions.push_back(
          FusionRow{method, slug, BaselineSpec(engine, {b, c}), false});
    }
    TAILOR_ASSIGN_OR_RETURN(std::vector<nlohmann::json> fused,
                            FuseAndScoreAll(fusions, keys));
    for (nlohmann::json& row : fused) rows.push_back(std::move(row));
    for (nlohmann::json& row : rows) {
      double sum = 0;
      for (const std::string& k : keys) sum += row[k]["accuracy"].get<double>();
      row["avg"] = sum / keys.size();
    }
    return nlohmann::json{{"keep_per_task", preset_.multitask_keep},
                          {"rows", rows}};
  }

  const DemoOptions& options_;
  const DemoPreset& preset_;
  at::Device device_ = at::kCPU;
  std::map<std::string, Task> tasks_;
  std::string cache_dir_;
  std::unique_ptr<UriResolver> resolver_;
  std::map<std::string, std::string> model_dirs_;
  std::map<std::string, std::string> model_keys_;  // lineage hashes
  nlohmann::json report_ = nlohmann::json::object();
  nlohmann::json seconds_ = nlohmann::json::object();
  absl::Mutex mu_;  // guards the counters below (worker threads)
  double fuse_seconds_ ABSL_GUARDED_BY(mu_) = 0;  // summed over the run
  double evaluate_seconds_ ABSL_GUARDED_BY(mu_) = 0;
  int64_t fusion_jobs_ ABSL_GUARDED_BY(mu_) = 0;
  int64_t score_memo_hits_ ABSL_GUARDED_BY(mu_) = 0;
  int64_t score_memo_misses_ ABSL_GUARDED_BY(mu_) = 0;
  // (checkpoint dir, task) -> scores of the trained models; main thread.
  std::map<std::pair<std::string, std::string>, nlohmann::json> trained_scores_;
};

TrainOptions MakeTrain(int64_t steps, int64_t batch, int64_t seq, double lr,
                       int64_t warmup, uint64_t seed) {
  TrainOptions o;
  o.steps = steps;
  o.batch_size = batch;
  o.seq_len = seq;
  o.lr = lr;
  o.warmup_steps = warmup;
  o.seed = seed;
  o.log_every = std::max<int64_t>(1, steps / 5);
  return o;
}

}  // namespace

nlohmann::json DemoPreset::ToJson() const {
  return {{"name", name},
          {"model", model.ToJson()},
          {"init_seed", init_seed},
          {"corpus",
           {{"max_bytes", corpus.max_bytes},
            {"chunk_tokens", corpus.chunk_tokens},
            {"heldout_every", corpus.heldout_every}}},
          {"pretrain", TrainJson(pretrain)},
          {"finetune", TrainJson(finetune)},
          {"finetune_partial", TrainJson(finetune_partial)},
          {"partial_layers", partial_layers},
          {"calib_samples", calib_samples},
          {"calib_seq_len", calib_seq_len},
          {"eval_windows", eval_windows},
          {"eval_seq_len", eval_seq_len},
          {"keep", keep},
          {"omega", omega},
          {"multitask_keep", multitask_keep},
          {"ties_density", ties_density},
          {"dare_drop", dare_drop},
          {"task_arithmetic_lambda", task_arithmetic_lambda},
          {"sweep_keep", sweep_keep},
          {"sweep_omega", sweep_omega},
          {"partial", partial},
          {"multitask", multitask}};
}

DemoPreset FullDemoPreset() {
  DemoPreset p;
  p.name = "full";
  p.model.hidden_size = 128;
  p.model.intermediate_size = 320;
  p.model.num_hidden_layers = 4;
  p.model.num_attention_heads = 4;
  p.model.num_key_value_heads = 2;
  p.model.vocab_size = kByteLevelVocabSize;
  p.model.rms_norm_eps = 1e-5;
  p.model.max_position_embeddings = 512;
  p.corpus.max_bytes = 1u << 20;
  p.pretrain = MakeTrain(600, 16, 128, 3e-3, 50, 11);
  p.finetune = MakeTrain(300, 16, 128, 1e-3, 20, 12);
  p.finetune_partial = MakeTrain(300, 16, 128, 1e-3, 20, 13);
  p.sweep_keep = {0.01, 0.05, 0.10, 0.20, 0.50};
  p.sweep_omega = {0.0, 0.25, 0.5, 0.75, 1.0};
  return p;
}

DemoPreset QuickDemoPreset() {
  DemoPreset p = FullDemoPreset();
  p.name = "quick";
  p.model.hidden_size = 64;
  p.model.intermediate_size = 160;
  p.model.num_hidden_layers = 2;
  p.partial_layers = 1;
  p.corpus.max_bytes = 256u << 10;
  p.pretrain = MakeTrain(600, 16, 64, 3e-3, 50, 11);
  p.finetune = MakeTrain(300, 16, 64, 1e-3, 20, 12);
  p.finetune_partial = MakeTrain(300, 16, 64, 1e-3, 20, 13);
  p.calib_samples = 32;
  p.calib_seq_len = 64;
  p.eval_windows = 64;
  p.eval_seq_len = 64;
  p.sweep_keep = {0.05, 0.5};
  p.sweep_omega = {0.0, 1.0};
  return p;
}

absl::StatusOr<nlohmann::json> RunForgettingDemo(const DemoOptions& options) {
  if (options.workdir.empty()) {
    return absl::InvalidArgumentError("demo: workdir must be set");
  }
  Demo demo(options);
  return demo.Run();
}

}  // namespace tailor
