#include "fusion/merge_methods.h"

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>

#include <utility>

#include "fusion/spider_kernel.h"
#include "fusion/tailor_kernel.h"
#include "fusion/top_k.h"
#include "util/fnv1a.h"

namespace tailor {
namespace {

// A zero scalar of `like`'s dtype and device, for at::where.
at::Tensor Zero(const at::Tensor& like) {
  return at::zeros({}, like.options());
}

// `t` where `mask` holds, exactly 0 elsewhere.
at::Tensor Masked(const at::Tensor& mask, const at::Tensor& t) {
  return at::where(mask, t, Zero(t));
}

// SplitMix64's finaliser: every output bit depends on every input bit.
uint64_t Mix(uint64_t x) {
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

// The DARE stream's seed: a chained hash of (seed, tensor name, task index),
// so it depends on nothing else (not the call order, thread or device).
// ATen's mt19937 uses the low 32 bits of its seed; after Mix those depend on
// all three inputs.
uint64_t DareSeed(uint64_t seed, absl::string_view tensor_name, uint64_t task) {
  uint64_t h = Mix(seed);
  h = Mix(h ^ Fnv1a(tensor_name));
  return Mix(h ^ task);
}

}  // namespace

uint64_t DrawSeed(uint64_t seed, absl::string_view tensor_name, uint64_t task) {
  return DareSeed(seed, tensor_name, task);
}

at::Tensor FuseTensor(const at::Tensor& pre, const at::Tensor& mask,
                      const at::Tensor& values) {
  at::Tensor flat = pre.to(at::kFloat).reshape({-1}).clone();
  const at::Tensor idx =
      mask.to(flat.device()).reshape({-1}).nonzero().reshape({-1});
  const at::Tensor add = values.to(flat.device(), at::kFloat).reshape({-1});
  flat.index_put_({idx}, flat.index({idx}) + add);
  return flat.reshape(pre.sizes());
}

at::Tensor KeptValues(const at::Tensor& mask, const at::Tensor& delta) {
  return delta.reshape({-1})
      .masked_select(mask.to(delta.device(), at::kBool).reshape({-1}))
      .to(at::kFloat)
      .contiguous();
}

MergedDelta Stitch(const std::vector<TaskDelta>& tasks,
                   Aggregation aggregation) {
  at::Tensor mask = tasks[0].mask.to(at::kBool);
  at::Tensor sum = Masked(mask, tasks[0].delta);
  at::Tensor selected = mask.to(sum.scalar_type());
  for (size_t i = 1; i < tasks.size(); ++i) {
    at::Tensor m = tasks[i].mask.to(at::kBool);
    mask = mask.logical_or(m);
    // Out of place: a float64 task promotes a float32 accumulator.
    sum = sum + Masked(m, tasks[i].delta);
    selected = selected + m.to(sum.scalar_type());
  }
  at::Tensor delta;
  switch (aggregation) {
    case Aggregation::kMeanSelected:
      delta = Masked(selected > 0, sum / selected.clamp_min(1));
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
  at::Tensor sum = deltas[0];
  for (size_t i = 1; i < deltas.size(); ++i) sum = sum + deltas[i];
  at::Tensor delta = sum * lambda;
  return {delta.ne(0), delta};
}

MergedDelta Ties(const std::vector<at::Tensor>& deltas, double density,
                 double lambda) {
  // Trim: each task keeps its top k = round(density * n) entries by |D_i|,
  // ties to the lower flat index (a selection, not a sort: top_k.h).
  std::vector<at::Tensor> trimmed;
  trimmed.reserve(deltas.size());
  at::Tensor total;
  for (const at::Tensor& d : deltas) {
    const int64_t k = KeepCount(density, d.numel());
    at::Tensor t = Masked(TopKAbsMaskFlat(d, k), d);
    total = total.defined() ? total + t : t;
    trimmed.push_back(std::move(t));
  }
  // Elect: per entry, the sign of the sum of the trimmed values. Disjoint
  // mean: the average over the tasks whose trimmed value is non-zero and has
  // the elected sign. An entry whose elected sign is 0 (nothing kept there,
  // or an exact cancellation) gets 0. The mask is where the scaled result is
  // non-zero (so lambda = 0 changes nothing).
  at::Tensor sign = total.sign();
  at::Tensor agree_sum = at::zeros_like(total);
  at::Tensor agree_count = at::zeros_like(total);
  for (const at::Tensor& t : trimmed) {
    at::Tensor agrees = t.ne(0) & sign.ne(0) & t.sign().eq(sign);
    agree_sum = agree_sum + Masked(agrees, t);
    agree_count = agree_count + agrees.to(total.scalar_type());
  }
  at::Tensor mean =
      Masked(agree_count > 0, agree_sum / agree_count.clamp_min(1));
  at::Tensor delta = mean * lambda;
  return {delta.ne(0), delta};
}

MergedDelta Dare(const std::vector<at::Tensor>& deltas, double drop,
                 double lambda, uint64_t seed, absl::string_view tensor_name) {
  at::Tensor sum;
  for (size_t i = 0; i < deltas.size(); ++i) {
    const at::Tensor& d = deltas[i];
    // Drawn on the CPU with a private generator (ATen's CPU uniform kernel
    // is serial), so the draw does not depend on the global RNG, the thread
    // count, the device or the order of calls; then moved to d's device.
    at::Generator gen = at::make_generator<at::CPUGeneratorImpl>(
        DareSeed(seed, tensor_name, i));
    at::Tensor u =
        at::rand(d.sizes(), gen, at::TensorOptions().dtype(at::kDouble));
    at::Tensor survive = u.ge(drop).to(d.device());
    at::Tensor kept = Masked(survive, d / (1.0 - drop));
    sum = sum.defined() ? sum + kept : kept;
  }
  at::Tensor delta = sum * lambda;
  return {delta.ne(0), delta};
}

ChunkedDenseMerge ChunkedDenseMerge::TaskArithmetic(int64_t /*tasks*/,
                                                    double lambda) {
  ChunkedDenseMerge m;
  m.lambda_ = lambda;
  return m;
}

ChunkedDenseMerge ChunkedDenseMerge::Dare(int64_t tasks, double drop,
                                          double lambda, uint64_t seed,
                                          absl::string_view tensor_name) {
  ChunkedDenseMerge m;
  m.dare_ = true;
  m.lambda_ = lambda;
  m.drop_ = drop;
  for (int64_t i = 0; i < tasks; ++i) {
    m.generators_.push_back(at::make_generator<at::CPUGeneratorImpl>(
        DareSeed(seed, tensor_name, static_cast<uint64_t>(i))));
  }
  return m;
}

void ChunkedDenseMerge::Merge(std::vector<at::Tensor>& deltas) {
  // The same elementwise operations as the whole-tensor functions, in
  // place: sum = D_0 + D_1 + ... (left to right), then * lambda; DARE first
  // divides each D_i by (1 - p) and zeroes the dropped entries (u < p is
  // exactly "not u >= p": u is never NaN).
  const int64_t n = deltas[0].numel();
  if (dare_) {
    if (!draw_.defined() || draw_.numel() < n) {
      draw_ = at::empty({n}, at::TensorOptions().dtype(at::kDouble));
      dropped_ = at::empty({n}, at::TensorOptions().dtype(at::kBool));
    }
    at::Tensor u = draw_.narrow(0, 0, n);
    at::Tensor dropped = dropped_.narrow(0, 0, n);
    for (size_t i = 0; i < deltas.size(); ++i) {
      // at::rand(sizes, gen) is uniform_(0, 1, gen) on a fresh tensor: one
      // serial pass of the generator in element order.
      u.uniform_(0, 1, generators_[i]);
      at::lt_out(dropped, u, drop_);
      at::Tensor& d = deltas[i];
      d.div_(1.0 - drop_);
      d.view({-1}).masked_fill_(dropped, 0.0);
    }
  }
  at::Tensor& sum = deltas[0];
  for (size_t i = 1; i < deltas.size(); ++i) sum.add_(deltas[i]);
  sum.mul_(lambda_);
}

MergedDelta Spider(const at::Tensor& w_pre, const at::Tensor& delta,
                   const at::Tensor& importance) {
  // Plain loops over SpiderKernel (spider_kernel.h: float64 statistics in
  // index order), which the streamed merge shares bit for bit.
  const at::ScalarType type =
      delta.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  const at::Tensor d = delta.to(at::kCPU, type).contiguous();
  const at::Tensor x =
      w_pre.to(at::kCPU, delta.scalar_type()).abs().to(type).contiguous();
  const at::Tensor g =
      importance.defined()
          ? importance.to(at::kCPU, delta.scalar_type()).to(type).contiguous()
          : d.abs();
  const int64_t n = d.numel();
  at::Tensor mask = at::empty(d.sizes(), d.options().dtype(at::kBool));
  at::Tensor out = at::empty_like(d);
  AT_DISPATCH_FLOATING_TYPES(type, "Spider", [&] {
    const scalar_t* dp = d.data_ptr<scalar_t>();
    const scalar_t* xp = x.data_ptr<scalar_t>();
    const scalar_t* gp = g.data_ptr<scalar_t>();
    SpiderKernel k(n);
    for (int64_t i = 0; i < n; ++i) k.AddMean(xp[i], gp[i]);
    k.EndMean();
    for (int64_t i = 0; i < n; ++i) k.AddDeviation(xp[i], gp[i]);
    k.EndDeviation();
    for (int64_t i = 0; i < n; ++i) k.AddM(xp[i], gp[i]);
    k.EndM();
    bool* mp = mask.data_ptr<bool>();
    scalar_t* op = out.data_ptr<scalar_t>();
    for (int64_t i = 0; i < n; ++i) {
      const double f = k.Factor(xp[i], gp[i]);
      mp[i] = f > 0;
      op[i] = f > 0 ? static_cast<scalar_t>(f) * dp[i] : scalar_t(0);
    }
  });
  return {mask.to(delta.device()), out.to(delta.device(), delta.scalar_type())};
}

}  // namespace tailor
