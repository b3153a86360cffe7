#ifndef TAILOR_DEMO_FORGETTING_DEMO_H_
#define TAILOR_DEMO_FORGETTING_DEMO_H_

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "demo/demo_preset.h"  // DemoPreset, FullDemoPreset, QuickDemoPreset
#include "nlohmann/json.hpp"

namespace tailor {

// The forgetting benchmark behind `tailorctl demo`: Model Tailor in
// miniature on real text.
//
// A byte-level LLaMA is pre-trained on task A (English prose), fine-tuned on
// task B (Python source) -- the whole model, and separately only its last
// layers (the paper's partial setting) -- and on task C (C source).
// Calibration statistics for B and C are collected on the fine-tuned models.
// Model Tailor and every other engine method (demo/demo_baselines.h) then
// fuse the fine-tuned model back into the pre-trained one through
// RunFusionJob (the same code the CLI and the service run), and each result
// is scored on held-out A and B by next-byte accuracy and perplexity: the
// paper's table (Avg, H-score, retention), a rho x omega sweep, and a
// two-task stitch (B + C at 5% each, beside every multi-task method).
//
// Trained checkpoints and calibration files are cached under the work
// directory in a folder keyed by the preset and the corpora's digests;
// every random choice is seeded, so a second run reuses them.
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
//   baseline_notes: [the baselines' parameters, one line per method
//   family; demo/demo_baselines.h],
//   score_memo {hits, misses}: checkpoints whose scores came from the memo
//   (same bytes as a checkpoint scored before) and those evaluated,
//   seconds {total, ...}.
// Accuracies are percentages; Avg is the mean of A and B; H-score their
// harmonic mean; retention_a = A / A(zero-shot), retention_b = B /
// B(fine-tuned), both in percent. Its tables and plot: demo/demo_report.h.
absl::StatusOr<nlohmann::json> RunForgettingDemo(const DemoOptions& options);

}  // namespace tailor

#endif  // TAILOR_DEMO_FORGETTING_DEMO_H_
