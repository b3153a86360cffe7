#include "fusion/merge_methods.h"

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>

#include <algorithm>

#include "fusion/tailor_kernel.h"
#include "util/enum_names.h"

namespace tailor {
namespace {

constexpr std::pair<absl::string_view, Aggregation> kAggregations[] = {
    {"mean_selected", Aggregation::kMeanSelected},
    {"mean_all", Aggregation::kMeanAll},
    {"sum", Aggregation::kSum}};

at::Tensor Zero(const at::Tensor& like) {
  return at::zeros({}, like.options());
}

// 64-bit FNV-1a over the bytes of `text`, folded into `h`.
uint64_t Fnv1a(uint64_t h, absl::string_view text) {
  for (unsigned char c : text) {
    h ^= c;
    h *= 0x100000001b3ull;
  }
  return h;
}

// SplitMix64 finaliser: spreads nearby seeds over the whole range.
uint64_t Mix(uint64_t x) {
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

}  // namespace

absl::StatusOr<Aggregation> ParseAggregation(absl::string_view text) {
  return ParseEnumName(text, "aggregate", kAggregations);
}

absl::string_view AggregationName(Aggregation a) {
  return EnumName(a, kAggregations);
}

MergedDelta Stitch(const std::vector<TaskDelta>& tasks,
                   Aggregation aggregation) {
  at::Tensor mask = tasks[0].mask.clone();
  at::Tensor sum =
      at::where(tasks[0].mask, tasks[0].delta, Zero(tasks[0].delta));
  at::Tensor selected = tasks[0].mask.to(sum.scalar_type());
  for (size_t i = 1; i < tasks.size(); ++i) {
    mask.logical_or_(tasks[i].mask);
    sum.add_(at::where(tasks[i].mask, tasks[i].delta, Zero(tasks[i].delta)));
    selected.add_(tasks[i].mask.to(sum.scalar_type()));
  }
  at::Tensor delta;
  switch (aggregation) {
    case Aggregation::kMeanSelected:
      delta = at::where(mask, sum / selected.clamp_min(1), Zero(sum));
      break;
    case Aggregation::kMeanAll:
      delta = sum / static_cast<double>(tasks.size());
      break;
    case Aggregation::kSum:
      delta = sum;
      break;
  }
  return {mask, delta};
}

MergedDelta TaskArithmetic(const std::vector<at::Tensor>& deltas,
                           double lambda) {
  at::Tensor sum = deltas[0].clone();
  for (size_t i = 1; i < deltas.size(); ++i) sum.add_(deltas[i]);
  at::Tensor delta = sum * lambda;
  return {delta.ne(0), delta};
}

MergedDelta Ties(const std::vector<at::Tensor>& deltas, double density,
                 double lambda) {
  // Trim: each task keeps its top-k |D_i| (ties to the lower index).
  std::vector<at::Tensor> trimmed;
  at::Tensor total = at::zeros_like(deltas[0]);
  for (const at::Tensor& d : deltas) {
    const int64_t k = KeepCount(density, d.numel());
    at::Tensor keep = at::zeros({d.numel()}, d.options().dtype(at::kBool));
    if (k > 0) {
      at::Tensor order = std::get<1>(d.abs().reshape({-1}).sort(
          /*stable=*/true, /*dim=*/0, /*descending=*/true));
      keep.index_put_({order.slice(0, 0, k)}, true);
    }
    at::Tensor t = at::where(keep.view(d.sizes()), d, Zero(d));
    total.add_(t);
    trimmed.push_back(std::move(t));
  }
  // Elect: the sign of the summed trimmed values; disjoint mean over the
  // tasks whose trimmed value is non-zero and agrees with it. Entries whose
  // elected sign is 0 (nothing kept, or an exact cancellation) get 0. The
  // mask is where the result is non-zero.
  at::Tensor sign = total.sign();
  at::Tensor agree_sum = at::zeros_like(total);
  at::Tensor agree_count = at::zeros_like(total);
  for (const at::Tensor& t : trimmed) {
    at::Tensor agrees = t.ne(0) & t.sign().eq(sign) & sign.ne(0);
    agree_sum.add_(at::where(agrees, t, Zero(t)));
    agree_count.add_(agrees.to(total.scalar_type()));
  }
  at::Tensor delta =
      at::where(agree_count > 0, agree_sum / agree_count.clamp_min(1),
                Zero(total)) *
      lambda;
  return {delta.ne(0), delta};
}

MergedDelta Dare(const std::vector<at::Tensor>& deltas, double drop,
                 double lambda, uint64_t seed, absl::string_view tensor_name) {
  at::Tensor sum = at::zeros_like(deltas[0]);
  const uint64_t name_hash = Fnv1a(0xcbf29ce484222325ull, tensor_name);
  for (size_t i = 0; i < deltas.size(); ++i) {
    const at::Tensor& d = deltas[i];
    // The draw depends only on (seed, name, task): made on the CPU with a
    // private generator, whatever the device, thread count or call order.
    at::Generator gen = at::make_generator<at::CPUGeneratorImpl>(
        Mix(Mix(seed) ^ name_hash ^ Mix(static_cast<uint64_t>(i) + 1)));
    at::Tensor u =
        at::rand(d.sizes(), gen, at::TensorOptions().dtype(at::kDouble));
    at::Tensor survive = (u >= drop).to(d.device());
    sum.add_(at::where(survive, d / (1.0 - drop), Zero(d)));
  }
  at::Tensor delta = sum * lambda;
  return {delta.ne(0), delta};
}

MergedDelta Spider(const at::Tensor& w_pre, const at::Tensor& delta,
                   const at::Tensor& importance) {
  auto zscore = [](const at::Tensor& x) {
    at::Tensor mean = x.mean();
    at::Tensor std = (x - mean).pow(2).mean().sqrt();
    return at::where(std > 0, (x - mean) / std.clamp_min(1e-300),
                     at::zeros_like(x));
  };
  at::Tensor i_score = at::sigmoid(zscore(w_pre.abs()));
  at::Tensor g =
      importance.defined() ? importance.to(delta.options()) : delta.abs();
  at::Tensor g_score = at::sigmoid(zscore(g));
  at::Tensor m = at::where(g_score > i_score, g_score / (g_score + i_score),
                           at::zeros_like(g_score));
  at::Tensor positive = m > 0;
  const int64_t count = positive.sum().item<int64_t>();
  if (count == 0) return {positive, at::zeros_like(delta)};
  at::Tensor mean = m.sum() / static_cast<double>(count);
  m = (m / mean).clamp_max(1.0);
  at::Tensor merged = m * delta;
  return {positive, merged};
}

}  // namespace tailor
