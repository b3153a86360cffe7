#ifndef TAILOR_DEMO_TRAINER_H_
#define TAILOR_DEMO_TRAINER_H_

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <functional>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "demo/byte_corpus.h"
#include "model/llama.h"

namespace tailor {

// Next-token training of a LlamaModel with AdamW (decoupled weight decay,
// applied to 2-D weights only), linear warm-up then cosine decay to
// min_lr_ratio * lr, and global gradient-norm clipping.
struct TrainOptions {
  int64_t steps = 1000;
  int64_t batch_size = 16;
  int64_t seq_len = 128;  // tokens per window (the loss sees seq_len - 1)
  double lr = 3e-3;
  double min_lr_ratio = 0.1;
  int64_t warmup_steps = 50;
  double weight_decay = 0.1;
  double beta1 = 0.9;
  double beta2 = 0.95;
  double eps = 1e-8;
  double grad_clip = 1.0;  // <= 0: no clipping
  uint64_t seed = 0;       // batch sampling
  // Which parameters move (by Hugging Face name); empty = all.
  std::function<bool(const std::string&)> trainable;
  // Called every `log_every` steps (and at the last) with the step (1-based)
  // and that step's training loss; optional.
  int64_t log_every = 100;
  std::function<void(int64_t step, double loss)> on_log;

  // INVALID_ARGUMENT naming the field and the rule.
  absl::Status Validate() const;
};

struct TrainResult {
  double final_loss = 0;  // mean training loss over the last 10% of steps
  int64_t trainable_parameters = 0;
  double seconds = 0;
};

// Trains `model` in place on windows drawn from `corpus.train()`.
// Deterministic for (model, corpus, options) on one machine and thread
// count. Parameters are left with requires_grad false. INVALID_ARGUMENT for
// bad options or a trainable filter that selects nothing; INTERNAL for
// LibTorch failures (including a non-finite loss).
absl::StatusOr<TrainResult> Train(LlamaModel& model, const ByteCorpus& corpus,
                                  const TrainOptions& options);

// Next-token quality on `windows` [n, T] (T >= 2): every position but the
// first is predicted from its prefix.
struct EvalResult {
  double accuracy = 0;    // fraction of tokens whose argmax is right
  double loss = 0;        // mean cross-entropy, nats per token
  double perplexity = 0;  // exp(loss)
  int64_t tokens = 0;     // predictions scored
};

absl::StatusOr<EvalResult> Evaluate(const LlamaModel& model,
                                    const at::Tensor& windows,
                                    int64_t batch_size = 32);

}  // namespace tailor

#endif  // TAILOR_DEMO_TRAINER_H_
