#ifndef TAILOR_DEMO_FORGETTING_DEMO_H_
#define TAILOR_DEMO_FORGETTING_DEMO_H_

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "model/byte_corpus.h"
#include "model/llama_config.h"
#include "model/trainer.h"
#include "nlohmann/json.hpp"

namespace tailor {

// The forgetting benchmark behind `tailorctl demo`: Model Tailor in
// miniature on real text.
//
// A byte-level LLaMA is pre-trained on task A (English prose), fine-tuned on
// task B (Python source) -- the whole model, and separately only its last
// layers (the paper's partial setting) -- and on task C (C source).
// Calibration statistics for B and C are collected on the fine-tuned models.
// Every engine method then fuses the fine-tuned model back into the
// pre-trained one through RunFusionJob (the same code the CLI and the
// service run), and each result is scored on held-out A and B by next-byte
// accuracy and perplexity: the paper's table (Avg, H-score, retention), a
// rho x omega sweep, and a two-task stitch (B + C at 5% each).
//
// Trained checkpoints and calibration files are cached under the work
// directory in a folder keyed by the preset and the corpora's digests;
// every random choice is seeded, so a second run reuses them.
struct DemoPreset {
  std::string name;  // "full" | "quick"
  LlamaConfig model;
  uint64_t init_seed = 1;
  CorpusOptions corpus;
  TrainOptions pretrain;          // on A
  TrainOptions finetune;          // on B and on C, whole model
  TrainOptions finetune_partial;  // on B, last `partial_layers` layers only
  int64_t partial_layers = 2;
  int64_t calib_samples = 64;  // windows of the task's training stream
  int64_t calib_seq_len = 128;
  int64_t eval_windows = 64;  // held-out windows per corpus
  int64_t eval_seq_len = 128;
  double keep = 0.10;            // rho of the main table
  double omega = 0.5;            // omega of the main table
  double multitask_keep = 0.05;  // rho per task when stitching B + C
  double ties_density = 0.10;    // TIES trim: the same budget as rho
  double dare_drop = 0.90;       // DARE p: keeps 1 - p = rho on average
  double task_arithmetic_lambda = 0.5;
  std::vector<double> sweep_keep;   // empty: no sweep
  std::vector<double> sweep_omega;  // empty: no sweep
  bool partial = true;              // run the partial fine-tuning setting
  bool multitask = true;            // run the B + C stitch

  // Everything that shapes the cached checkpoints and the results.
  nlohmann::json ToJson() const;
};

// The README's preset: 4 layers, hidden 128; minutes on a 2-core CPU.
DemoPreset FullDemoPreset();
// For tests: a smaller model and fewer steps, same scenario.
DemoPreset QuickDemoPreset();

struct DemoOptions {
  DemoPreset preset;
  std::string workdir;          // created if missing
  std::string device = "auto";  // training, calibration, fusion, evaluation
  // Fusion jobs (each fused and scored) run at once; >= 1. The results do
  // not depend on it.
  int jobs = 1;
  // Scores are memoized on disk by the SHA-256 of the scored checkpoint's
  // files (and the device), so a warm run re-runs every fusion job but
  // evaluates only weights it has not seen byte for byte. false: evaluate
  // everything afresh (the memo is still written).
  bool reuse_scores = true;
  // Progress lines (phase, step, loss); optional.
  std::function<void(const std::string&)> log;
};

// Runs the whole scenario and returns the report:
//   preset, device, corpora {A, B, C: name, description, files, tokens,
//   digest}, training {phase: loss, seconds, cached},
//   single_task: [{setting: "full" | "partial", rows: [{method, A: {accuracy,
//   perplexity, loss}, B: {...}, avg, h_score, retention_a, retention_b,
//   kept_fraction?, error_reduction?}]}],
//   sweep: [{keep, omega, A, B, avg, h_score, ...}],
//   multi_task: {rows: [{method, A, B, C, avg}]},
//   score_memo {hits, misses}: checkpoints whose scores came from the memo
//   (same bytes as a checkpoint scored before) and those evaluated,
//   seconds {total, ...}.
// Accuracies are percentages; Avg is the mean of A and B; H-score their
// harmonic mean; retention_a = A / A(zero-shot), retention_b = B /
// B(fine-tuned), both in percent.
absl::StatusOr<nlohmann::json> RunForgettingDemo(const DemoOptions& options);

// The paper-style tables of a report, for a terminal.
std::string FormatDemoTables(const nlohmann::json& report);

// Writes `<dir>/sweep.dat` and `<dir>/tradeoff.gp` (a gnuplot script that
// draws the rho/omega trade-off curve to `<dir>/tradeoff.png`) from a
// report with a sweep. Returns the script's path.
absl::StatusOr<std::string> WriteTradeoffPlotScript(
    const nlohmann::json& report, const std::string& dir);

}  // namespace tailor

#endif  // TAILOR_DEMO_FORGETTING_DEMO_H_
