#include "demo/forgetting_demo.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <cstdio>
#include <map>
#include <memory>
#include <optional>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/synchronization/mutex.h"
#include "demo/demo_baselines.h"
#include "demo/model_cache.h"
#include "demo/score_memo.h"
#include "fusion/fusion_job.h"
#include "fusion/fusion_spec.h"
#include "storage/uri_resolver.h"
#include "util/device.h"
#include "util/file_util.h"
#include "util/parallel_for.h"
#include "util/sha256.h"
#include "util/status_macros.h"
#include "util/stopwatch.h"

// The experiments of the forgetting benchmark: the tables' rows, each a
// fusion job run and scored. The presets are demo_preset.cc, the trained
// models model_cache.cc, the score memo score_memo.cc, the tables and plot
// demo_report.cc.

namespace tailor {
namespace {

double HarmonicMean(double a, double b) {
  return a + b > 0 ? 2 * a * b / (a + b) : 0.0;
}

class Demo {
 public:
  explicit Demo(const DemoOptions& options)
      : options_(options), preset_(options.preset) {}

  absl::StatusOr<nlohmann::json> Run() {
    const Stopwatch total;
    TAILOR_ASSIGN_OR_RETURN(device_, ResolveDevice(options_.device));
    TAILOR_RETURN_IF_ERROR(Setup());
    models_ = std::make_unique<DemoModelCache>(preset_, options_.workdir,
                                               device_, options_.log);
    scores_ = std::make_unique<DemoScoreMemo>(JoinPath(cache_dir_, "scores"),
                                              &tasks_, preset_.model, device_,
                                              options_.reuse_scores);
    TAILOR_ASSIGN_OR_RETURN(UriResolver resolver,
                            UriResolver::Create({options_.workdir}));
    resolver_ = std::make_unique<UriResolver>(std::move(resolver));

    // Models: pre-trained on A; fine-tuned on B (full and partial) and C.
    TAILOR_RETURN_IF_ERROR(models_->EnsureModel(
        "pretrained", "", tasks_.at("A"), preset_.pretrain, nullptr, ""));
    TAILOR_RETURN_IF_ERROR(models_->EnsureModel(
        "ft-B", "pretrained", tasks_.at("B"), preset_.finetune, nullptr, ""));
    if (preset_.partial) {
      const int64_t first =
          preset_.model.num_hidden_layers - preset_.partial_layers;
      auto last_layers = [first](const std::string& name) {
        int64_t layer = -1;
        return std::sscanf(name.c_str(), "model.layers.%ld.", &layer) == 1 &&
               layer >= first;
      };
      TAILOR_RETURN_IF_ERROR(
          models_->EnsureModel("ft-B-partial", "pretrained", tasks_.at("B"),
                               preset_.finetune_partial, last_layers,
                               absl::StrCat("layers >= ", first)));
    }
    if (preset_.multitask) {
      TAILOR_RETURN_IF_ERROR(models_->EnsureModel(
          "ft-C", "pretrained", tasks_.at("C"), preset_.finetune, nullptr, ""));
    }
    TAILOR_RETURN_IF_ERROR(models_->EnsureHessians("ft-B", tasks_.at("B")));
    if (preset_.partial) {
      TAILOR_RETURN_IF_ERROR(
          models_->EnsureHessians("ft-B-partial", tasks_.at("B")));
    }
    if (preset_.multitask) {
      TAILOR_RETURN_IF_ERROR(models_->EnsureHessians("ft-C", tasks_.at("C")));
    }
    report_["training"] = models_->training();
    report_["models"] = models_->ModelsJson();

    const Stopwatch fuse_timer;
    nlohmann::json single = nlohmann::json::array();
    TAILOR_ASSIGN_OR_RETURN(nlohmann::json full, SingleTask("full", "ft-B"));
    single.push_back(std::move(full));
    if (preset_.partial) {
      TAILOR_ASSIGN_OR_RETURN(nlohmann::json partial,
                              SingleTask("partial", "ft-B-partial"));
      single.push_back(std::move(partial));
    }
    report_["single_task"] = std::move(single);
    report_["baseline_notes"] = BaselineNotes(preset_);
    if (!preset_.sweep_keep.empty() && !preset_.sweep_omega.empty()) {
      TAILOR_ASSIGN_OR_RETURN(report_["sweep"], Sweep());
    }
    if (preset_.multitask) {
      TAILOR_ASSIGN_OR_RETURN(report_["multi_task"], MultiTask());
    }
    seconds_.update(models_->seconds());
    seconds_["fuse_and_evaluate"] = fuse_timer.Seconds();
    {
      absl::MutexLock lock(&mu_);
      seconds_["fusion_jobs"] = fuse_seconds_;
      report_["fusion_jobs"] = fusion_jobs_;
    }
    seconds_["evaluation"] = scores_->evaluate_seconds();
    report_["score_memo"] = {{"hits", scores_->hits()},
                             {"misses", scores_->misses()}};
    report_["jobs"] = options_.jobs;
    seconds_["total"] = total.Seconds();
    report_["seconds"] = seconds_;
    return report_;
  }

 private:
  void Log(const std::string& line) const {
    if (options_.log) options_.log(line);
  }

  const std::string& pretrained_dir() const {
    return models_->dir("pretrained");
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
    nlohmann::json key = {{"version", kDemoCacheVersion},
                          {"preset", preset_.ToJson()}};
    for (auto& [task_key, source] : sources) {
      TAILOR_ASSIGN_OR_RETURN(ByteCorpus corpus,
                              ByteCorpus::Load(source, preset_.corpus));
      DemoTask task{task_key, std::move(corpus), at::Tensor()};
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
    TAILOR_ASSIGN_OR_RETURN(nlohmann::json fresh, scores_->Score(dir, missing));
    for (const std::string& key : missing) {
      out[key] = fresh[key];
      trained_scores_[{dir, key}] = fresh[key];
    }
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

  // The baselines' rows (their fused checkpoints are not kept).
  static void AppendBaselines(std::vector<DemoBaseline> baselines,
                              std::vector<FusionRow>& rows) {
    for (DemoBaseline& b : baselines) {
      rows.push_back(FusionRow{std::move(b.label), std::move(b.slug),
                               std::move(b.spec), /*keep_output=*/false});
    }
  }

  // Runs a fusion job into fused/<slug> and scores it on `keys`; the fused
  // checkpoint is removed afterwards unless row.keep_output. Thread-safe.
  absl::StatusOr<nlohmann::json> FuseAndScore(
      FusionRow row, const std::vector<std::string>& keys) {
    const std::string out = JoinPath(JoinPath(cache_dir_, "fused"), row.slug);
    row.spec.output_uri = out;
    const Stopwatch timer;
    TAILOR_ASSIGN_OR_RETURN(nlohmann::json job,
                            RunFusionJob(row.spec, *resolver_));
    const double fuse_seconds = timer.Seconds();
    TAILOR_ASSIGN_OR_RETURN(nlohmann::json scores, scores_->Score(out, keys));
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
    // Dead inputs met (calibrated tensors x tasks) and the entries in them
    // reverted for free (issue #17 point 9).
    int64_t dead = 0, reverted = 0;
    for (const nlohmann::json& t : job.value("tensors", nlohmann::json())) {
      for (const nlohmann::json& tj : t.value("tasks", nlohmann::json())) {
        dead += tj.value("dead_columns", int64_t{0});
        reverted += tj.value("dead_entries_reverted", int64_t{0});
      }
    }
    scores["dead_columns"] = dead;
    scores["dead_entries_reverted"] = reverted;
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
    ParallelFor(rows.size(), options_.jobs,
                [&](size_t i) { results[i] = FuseAndScore(rows[i], keys); });
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
    t.finetuned_uri = models_->dir(ft_name);
    if (with_hessians) t.hessian_uri = models_->HessianPath(ft_name);
    return t;
  }

  absl::StatusOr<nlohmann::json> SingleTask(const std::string& setting,
                                            const std::string& ft_name) {
    Log(absl::StrCat("single task (", setting, " fine-tune): fusing"));
    const std::vector<std::string> keys = {"A", "B"};
    TAILOR_ASSIGN_OR_RETURN(nlohmann::json zero_shot,
                            Score(pretrained_dir(), keys));
    TAILOR_ASSIGN_OR_RETURN(nlohmann::json finetuned,
                            Score(models_->dir(ft_name), keys));
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
    AppendBaselines(
        SingleTaskBaselines(preset_, BaseSpec(""), task, setting,
                            setting != "partial" || preset_.partial_mergekit),
        fusions);
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
                              Score(models_->dir(name), keys));
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
    AppendBaselines(MultiTaskBaselines(preset_, BaseSpec(""), {b, c}, " B+C"),
                    fusions);
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
  std::map<std::string, DemoTask> tasks_;
  std::string cache_dir_;
  std::unique_ptr<UriResolver> resolver_;
  std::unique_ptr<DemoModelCache> models_;  // set up on the main thread
  std::unique_ptr<DemoScoreMemo> scores_;   // thread-safe
  nlohmann::json report_ = nlohmann::json::object();
  nlohmann::json seconds_ = nlohmann::json::object();
  absl::Mutex mu_;  // guards the counters below (worker threads)
  double fuse_seconds_ ABSL_GUARDED_BY(mu_) = 0;  // summed over the run
  int64_t fusion_jobs_ ABSL_GUARDED_BY(mu_) = 0;
  // (checkpoint dir, task) -> scores of the trained models; main thread.
  std::map<std::pair<std::string, std::string>, nlohmann::json> trained_scores_;
};

}  // namespace

absl::StatusOr<nlohmann::json> RunForgettingDemo(const DemoOptions& options) {
  if (options.workdir.empty()) {
    return absl::InvalidArgumentError("demo: workdir must be set");
  }
  Demo demo(options);
  return demo.Run();
}

}  // namespace tailor
