#include "demo/demo_preset.h"

#include <algorithm>

namespace tailor {
namespace {

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

nlohmann::json TrainOptionsJson(const TrainOptions& o) {
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

nlohmann::json DemoPreset::ToJson() const {
  return {{"name", name},
          {"model", model.ToJson()},
          {"init_seed", init_seed},
          {"corpus",
           {{"max_bytes", corpus.max_bytes},
            {"chunk_tokens", corpus.chunk_tokens},
            {"heldout_every", corpus.heldout_every}}},
          {"pretrain", TrainOptionsJson(pretrain)},
          {"finetune", TrainOptionsJson(finetune)},
          {"finetune_partial", TrainOptionsJson(finetune_partial)},
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
          {"slerp_t", slerp_t},
          {"breadcrumbs_gamma", breadcrumbs_gamma},
          {"della_epsilon", della_epsilon},
          {"sweep_keep", sweep_keep},
          {"sweep_omega", sweep_omega},
          {"partial", partial},
          {"multitask", multitask},
          {"partial_mergekit", partial_mergekit}};
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
  p.partial_mergekit = false;
  return p;
}

}  // namespace tailor
