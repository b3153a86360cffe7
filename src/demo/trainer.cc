#include "demo/trainer.h"

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>

#include <cmath>
#include <vector>

#include "absl/strings/str_cat.h"
#include "util/status_macros.h"
#include "util/stopwatch.h"
#include "util/torch_status.h"

namespace tailor {
namespace {

constexpr double kPi = 3.14159265358979323846;

double LearningRate(const TrainOptions& o, int64_t step /* 0-based */) {
  if (step < o.warmup_steps) {
    return o.lr * static_cast<double>(step + 1) / o.warmup_steps;
  }
  const int64_t decay_steps = std::max<int64_t>(1, o.steps - o.warmup_steps);
  const double progress =
      std::min(1.0, static_cast<double>(step - o.warmup_steps) / decay_steps);
  const double cosine = 0.5 * (1.0 + std::cos(kPi * progress));
  return o.lr * (o.min_lr_ratio + (1.0 - o.min_lr_ratio) * cosine);
}

struct AdamState {
  at::Tensor param;  // handle into the model
  at::Tensor m, v;
  bool decay = false;
};

}  // namespace

absl::Status TrainOptions::Validate() const {
  auto bad = [](absl::string_view field, absl::string_view rule) {
    return absl::InvalidArgumentError(
        absl::StrCat("training option ", field, ": ", rule));
  };
  if (steps < 1) return bad("steps", "must be >= 1");
  if (batch_size < 1) return bad("batch_size", "must be >= 1");
  if (seq_len < 2) return bad("seq_len", "must be >= 2");
  if (!(lr > 0) || !std::isfinite(lr)) return bad("lr", "must be > 0");
  if (!(min_lr_ratio >= 0 && min_lr_ratio <= 1)) {
    return bad("min_lr_ratio", "must be in [0, 1]");
  }
  if (warmup_steps < 0) return bad("warmup_steps", "must be >= 0");
  if (!(weight_decay >= 0)) return bad("weight_decay", "must be >= 0");
  if (!(beta1 >= 0 && beta1 < 1)) return bad("beta1", "must be in [0, 1)");
  if (!(beta2 >= 0 && beta2 < 1)) return bad("beta2", "must be in [0, 1)");
  if (!(eps > 0)) return bad("eps", "must be > 0");
  if (log_every < 1) return bad("log_every", "must be >= 1");
  return absl::OkStatus();
}

absl::StatusOr<TrainResult> Train(LlamaModel& model, const ByteCorpus& corpus,
                                  const TrainOptions& options) {
  TAILOR_RETURN_IF_ERROR(options.Validate());
  if (options.seq_len > corpus.train().numel()) {
    return absl::InvalidArgumentError(
        absl::StrCat("training option seq_len: ", options.seq_len,
                     " is longer than corpus '", corpus.name(),
                     "' training stream (", corpus.train().numel(), ")"));
  }
  std::vector<AdamState> states;
  int64_t trainable = 0;
  for (const auto& [name, param] : model.NamedParameters()) {
    if (options.trainable && !options.trainable(name)) continue;
    AdamState s;
    s.param = param;
    s.decay = param.dim() == 2;
    states.push_back(std::move(s));
    trainable += param.numel();
  }
  if (states.empty()) {
    return absl::InvalidArgumentError(
        "training: the trainable filter selects no parameter");
  }
  const Stopwatch timer;
  TrainResult result;
  result.trainable_parameters = trainable;
  absl::Status status = CatchTorch("training", [&]() -> absl::Status {
    for (AdamState& s : states) {
      s.param.requires_grad_(true);
      s.m = at::zeros_like(s.param);
      s.v = at::zeros_like(s.param);
    }
    at::Generator gen = at::detail::createCPUGenerator(options.seed);
    const int64_t tail_from =
        options.steps - std::max<int64_t>(1, options.steps / 10);
    double tail_sum = 0;
    int64_t tail_count = 0;
    for (int64_t step = 0; step < options.steps; ++step) {
      const at::Tensor batch =
          corpus.SampleTrain(options.batch_size, options.seq_len, gen);
      at::Tensor loss = model.Loss(batch);
      const double loss_value = loss.item<double>();
      if (!std::isfinite(loss_value)) {
        return absl::InternalError(
            absl::StrCat("training diverged: loss ", loss_value, " at step ",
                         step + 1, " (lower the learning rate)"));
      }
      for (AdamState& s : states) {
        if (s.param.grad().defined()) s.param.mutable_grad().zero_();
      }
      loss.backward();
      at::NoGradGuard no_grad;
      double clip_scale = 1.0;
      if (options.grad_clip > 0) {
        at::Tensor total = at::zeros({}, states[0].param.options());
        for (AdamState& s : states) {
          if (s.param.grad().defined()) total += s.param.grad().pow(2).sum();
        }
        const double norm = std::sqrt(total.item<double>());
        if (norm > options.grad_clip) clip_scale = options.grad_clip / norm;
      }
      const double lr = LearningRate(options, step);
      const double bc1 = 1.0 - std::pow(options.beta1, step + 1);
      const double bc2 = 1.0 - std::pow(options.beta2, step + 1);
      for (AdamState& s : states) {
        if (!s.param.grad().defined()) continue;
        at::Tensor g = s.param.grad();
        if (clip_scale != 1.0) g = g * clip_scale;
        s.m.mul_(options.beta1).add_(g, 1.0 - options.beta1);
        s.v.mul_(options.beta2).addcmul_(g, g, 1.0 - options.beta2);
        if (s.decay && options.weight_decay > 0) {
          s.param.mul_(1.0 - lr * options.weight_decay);
        }
        const at::Tensor denom = (s.v / bc2).sqrt_().add_(options.eps);
        s.param.addcdiv_(s.m, denom, -lr / bc1);
      }
      if (step >= tail_from) {
        tail_sum += loss_value;
        ++tail_count;
      }
      if (options.on_log &&
          ((step + 1) % options.log_every == 0 || step + 1 == options.steps)) {
        options.on_log(step + 1, loss_value);
      }
    }
    result.final_loss = tail_sum / std::max<int64_t>(1, tail_count);
    return absl::OkStatus();
  });
  // Leave the model as it was handed in: plain tensors, no grads.
  (void)CatchTorch("training cleanup", [&] {
    for (AdamState& s : states) {
      s.param.mutable_grad() = at::Tensor();
      s.param.requires_grad_(false);
    }
  });
  TAILOR_RETURN_IF_ERROR(status);
  result.seconds = timer.Seconds();
  return result;
}

absl::StatusOr<EvalResult> Evaluate(const LlamaModel& model,
                                    const at::Tensor& windows,
                                    int64_t batch_size) {
  if (!windows.defined() || windows.dim() != 2 || windows.size(0) < 1 ||
      windows.size(1) < 2) {
    return absl::InvalidArgumentError(
        "evaluation: windows must be [n >= 1, T >= 2] token ids");
  }
  if (batch_size < 1) {
    return absl::InvalidArgumentError("evaluation: batch_size must be >= 1");
  }
  TAILOR_RETURN_IF_ERROR(model.CheckTokens(windows));
  return CatchTorch("evaluation", [&] {
    at::NoGradGuard no_grad;
    double loss_sum = 0;
    int64_t correct = 0;
    int64_t count = 0;
    for (int64_t begin = 0; begin < windows.size(0); begin += batch_size) {
      const int64_t b = std::min(batch_size, windows.size(0) - begin);
      const at::Tensor tokens =
          windows.narrow(0, begin, b).to(model.device(), at::kLong);
      const at::Tensor logits = model.Forward(tokens);
      const int64_t t = logits.size(1);
      const int64_t v = logits.size(2);
      const at::Tensor predicted =
          logits.narrow(1, 0, t - 1).reshape({-1, v}).to(at::kDouble);
      const at::Tensor target = tokens.narrow(1, 1, t - 1).reshape({-1});
      loss_sum += at::nll_loss(at::log_softmax(predicted, -1), target,
                               /*weight=*/{}, at::Reduction::Sum)
                      .item<double>();
      correct += predicted.argmax(-1).eq(target).sum().item<int64_t>();
      count += target.numel();
    }
    EvalResult r;
    r.tokens = count;
    r.loss = loss_sum / count;
    r.accuracy = static_cast<double>(correct) / count;
    r.perplexity = std::exp(r.loss);
    return r;
  });
}

}  // namespace tailor
