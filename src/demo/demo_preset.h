#ifndef TAILOR_DEMO_DEMO_PRESET_H_
#define TAILOR_DEMO_DEMO_PRESET_H_

// The forgetting benchmark's presets (demo/forgetting_demo.h): the model,
// corpora, training runs and fusion knobs of one scenario.

#include <cstdint>
#include <string>
#include <vector>

#include "demo/byte_corpus.h"
#include "demo/trainer.h"
#include "model/llama_config.h"
#include "nlohmann/json.hpp"

namespace tailor {

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
  double ties_density = 0.10;    // TIES, breadcrumbs, DELLA: the budget rho
  double dare_drop = 0.90;       // DARE, DARE-TIES p: keep 1 - p = rho
  double task_arithmetic_lambda = 0.5;
  // The mergekit-family baselines (demo/demo_baselines.h); their sparse
  // ones keep ties_density and drop dare_drop as TIES and DARE do.
  double slerp_t = 0.5;             // halfway from pretrained to the task
  double breadcrumbs_gamma = 0.01;  // mergekit's default: top 1% of |D| out
  double della_epsilon = 0.05;      // keep p in density +- epsilon (> 0)
  std::vector<double> sweep_keep;   // empty: no sweep
  std::vector<double> sweep_omega;  // empty: no sweep
  bool partial = true;              // run the partial fine-tuning setting
  bool multitask = true;            // run the B + C stitch
  // The mergekit-family rows in the partial setting too (they always run
  // in the full one and the stitch); off in the quick preset, whose partial
  // table keeps only the original baselines to bound CI time.
  bool partial_mergekit = true;

  // Everything that shapes the cached checkpoints and the results.
  nlohmann::json ToJson() const;
};

// The README's preset: 4 layers, hidden 128; minutes on a 2-core CPU.
DemoPreset FullDemoPreset();
// For tests: a smaller model and fewer steps, same scenario.
DemoPreset QuickDemoPreset();

// The JSON form of a training run's options (what its cache key holds).
nlohmann::json TrainOptionsJson(const TrainOptions& options);

}  // namespace tailor

#endif  // TAILOR_DEMO_DEMO_PRESET_H_
