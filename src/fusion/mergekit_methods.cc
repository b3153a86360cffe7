#include "fusion/mergekit_methods.h"

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>

#include <algorithm>
#include <cmath>
#include <iterator>
#include <utility>

#include "fusion/top_k.h"

namespace tailor {
namespace {

// mergekit's slerp(): the norm below which a vector is not normalised, and
// the |cos| above which two tensors count as colinear (plain lerp).
constexpr double kSlerpEps = 1e-8;
constexpr double kSlerpDotThreshold = 0.9995;
// mergekit's model_stock: the floor of the norm product.
constexpr double kStockNormFloor = 1e-6;

at::Tensor Zero(const at::Tensor& like) {
  return at::zeros({}, like.options());
}

// sum_j x[j] * y[j] over flat contiguous CPU tensors of one floating type,
// in float64, in index order (so any chunking of the same elements, fed in
// order, gives the same bits).
double Dot(const at::Tensor& x, const at::Tensor& y, double acc) {
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "MergekitDot", [&] {
    const scalar_t* a = x.data_ptr<scalar_t>();
    const scalar_t* b = y.data_ptr<scalar_t>();
    for (int64_t j = 0; j < x.numel(); ++j) {
      acc += static_cast<double>(a[j]) * static_cast<double>(b[j]);
    }
  });
  return acc;
}

// SLERP's statistics of a chunk, v1 = pre + D (the fine-tuned tensor) in
// float64: s[0] += |pre|^2, s[1] += |v1|^2, s[2] += pre . v1.
void SlerpStatistics(const at::Tensor& pre, const at::Tensor& d,
                     std::vector<double>& s) {
  AT_DISPATCH_FLOATING_TYPES(pre.scalar_type(), "SlerpStatistics", [&] {
    const scalar_t* p = pre.data_ptr<scalar_t>();
    const scalar_t* q = d.data_ptr<scalar_t>();
    double s0 = s[0], s1 = s[1], s2 = s[2];
    for (int64_t j = 0; j < pre.numel(); ++j) {
      const double v0 = static_cast<double>(p[j]);
      const double v1 = v0 + static_cast<double>(q[j]);
      s0 += v0 * v0;
      s1 += v1 * v1;
      s2 += v0 * v1;
    }
    s[0] = s0;
    s[1] = s1;
    s[2] = s2;
  });
}

at::Tensor WeightedSum(const std::vector<at::Tensor>& r,
                       const std::vector<double>& w) {
  at::Tensor sum = r[0] * w[0];
  for (size_t i = 1; i < r.size(); ++i) sum = sum + r[i] * w[i];
  return sum;
}

double Sum(const std::vector<double>& w) {
  double s = 0;
  for (double x : w) s += x;
  return s;
}

// Task arithmetic and breadcrumbs (mergekit's GTATask without consensus):
// lambda * sum_i w_i r_i, divided by sum_i w_i when normalising (Validate
// refused a zero sum).
at::Tensor Combine(const std::vector<at::Tensor>& r, const MergekitParams& p) {
  at::Tensor mixed = WeightedSum(r, p.weights);
  if (p.normalize) mixed = mixed / Sum(p.weights);
  return mixed * p.lambda;
}

// One uniform draw in [0, 1) per element of `like`, from `gen`, in float64
// on the CPU, in element order (as DARE's).
at::Tensor Uniform(const at::Tensor& like, at::Generator& gen) {
  at::Tensor u =
      at::empty({like.numel()}, at::TensorOptions().dtype(at::kDouble));
  u.uniform_(0, 1, gen);
  return u;
}

// The generalised TIES (Yadav et al., "TIES-Merging: Resolving Interference
// When Merging Models", NeurIPS 2023, arXiv:2306.01708, section 3: trim,
// elect, disjoint merge), with mergekit's count rule and weights.
at::Tensor TiesGeneral(const std::vector<at::Tensor>& deltas,
                       const MergekitParams& p) {
  std::vector<at::Tensor> trimmed;
  for (const at::Tensor& d : deltas) {
    const int64_t k = RuleCount(p.count_rule, p.density, d.numel());
    trimmed.push_back(at::where(TopKAbsMaskFlat(d, k), d, Zero(d)));
  }
  return ElectAndMerge(trimmed, p.weights, p.normalize, p.sign_cancel,
                       p.lambda);
}

// Model Breadcrumbs (Davari and Belilovsky, "Model Breadcrumbs: Scaling
// Multi-Task Model Merging with Sparse Masks", ECCV 2024, arXiv:2312.06795,
// section 3: per layer, mask out the largest (outlier) and the smallest
// magnitudes of each task vector, then task arithmetic).
at::Tensor Breadcrumbs(const std::vector<at::Tensor>& deltas,
                       const MergekitParams& p) {
  std::vector<at::Tensor> kept;
  for (const at::Tensor& d : deltas) {
    kept.push_back(at::where(
        BreadcrumbsMask(d, p.density, p.gamma, p.count_rule), d, Zero(d)));
  }
  return Combine(kept, p);
}

// DELLA (Deep et al., "DELLA-Merging: Reducing Interference in Model
// Merging through Magnitude-Based Sampling", arXiv:2406.11617, section 3,
// MagPrune): each entry of each task vector survives with a probability
// that grows with its magnitude rank, p_i in [density - epsilon, density +
// epsilon]; a survivor is rescaled by 1 / p_i (the paper's rescaling, so
// E[r_i] = D_i; mergekit's `rescale` matches the l1 norm instead); then
// TIES's election and disjoint merge.
at::Tensor Della(const std::vector<at::Tensor>& deltas, const MergekitParams& p,
                 absl::string_view name) {
  std::vector<at::Tensor> kept;
  for (size_t i = 0; i < deltas.size(); ++i) {
    const at::Tensor& d = deltas[i];
    if (p.density >= 1) {
      kept.push_back(d);
      continue;
    }
    at::Generator gen =
        at::make_generator<at::CPUGeneratorImpl>(DrawSeed(p.seed, name, i));
    const at::Tensor prob =
        DellaKeepProbabilities(d.to(at::kCPU), p.density, p.epsilon);
    const at::Tensor u = Uniform(d, gen).reshape(d.sizes());
    const at::Tensor survive = u.lt(prob).to(d.device());
    kept.push_back(
        at::where(survive, d / prob.to(d.device(), d.scalar_type()), Zero(d)));
  }
  return ElectAndMerge(kept, p.weights, p.normalize, p.sign_cancel, p.lambda);
}

}  // namespace

MergekitParams MergekitParamsOf(const FusionSpec& spec) {
  MergekitParams p;
  p.method = spec.method;
  for (const TaskSpec& t : spec.tasks)
    p.weights.push_back(t.weight.value_or(1));
  p.normalize = spec.NormalizeWeights();
  p.lambda = spec.lambda;
  p.t = spec.t;
  p.density = spec.density;
  p.drop = spec.drop;
  p.gamma = spec.gamma;
  p.epsilon = spec.epsilon;
  p.count_rule = spec.count_rule;
  p.sign_cancel = spec.sign_cancel;
  p.seed = spec.seed;
  return p;
}

bool IsMergekitMethod(Method method) {
  constexpr Method kFamily[] = {Method::kLinear,   Method::kSlerp,
                                Method::kDareTies, Method::kBreadcrumbs,
                                Method::kDella,    Method::kModelStock};
  return std::find(std::begin(kFamily), std::end(kFamily), method) !=
         std::end(kFamily);
}

bool UsesMergekitPath(const FusionSpec& spec) {
  if (IsMergekitMethod(spec.method)) return true;
  switch (spec.method) {
    case Method::kTaskArithmetic:
    case Method::kTies: {
      bool weighted = spec.normalize_weights.has_value();
      for (const TaskSpec& t : spec.tasks) weighted = weighted || t.weight;
      return weighted || (spec.method == Method::kTies &&
                          (spec.count_rule != CountRule::kRound ||
                           spec.sign_cancel != SignCancel::kZero));
    }
    default:
      return false;
  }
}

bool MergekitStreams(const FusionSpec& spec) {
  // Every method but the ranked ones (breadcrumbs and della rank |D| over
  // the whole tensor); task_arithmetic with weights too (ties ranks).
  if (spec.method == Method::kTaskArithmetic) return true;
  return IsMergekitMethod(spec.method) && spec.method != Method::kBreadcrumbs &&
         spec.method != Method::kDella;
}

at::Tensor ElectAndMerge(const std::vector<at::Tensor>& sparse,
                         const std::vector<double>& weights, bool normalize,
                         SignCancel cancel, double lambda) {
  std::vector<at::Tensor> wr;
  at::Tensor total;
  for (size_t i = 0; i < sparse.size(); ++i) {
    wr.push_back(sparse[i] * weights[i]);
    total = i == 0 ? wr[0] : total + wr[i];
  }
  // kPositive: mergekit's majority_sign = (sum >= 0) * 2 - 1.
  const at::Tensor sign =
      cancel == SignCancel::kZero
          ? total.sign()
          : at::where(total.ge(0), at::ones({}, total.options()),
                      -at::ones({}, total.options()));
  at::Tensor mixed = at::zeros_like(total);
  at::Tensor divisor = at::zeros_like(total);
  for (size_t i = 0; i < wr.size(); ++i) {
    // A zero value's sign (0) never equals an elected +-1; an elected 0
    // (kZero on a zero sum) selects nothing.
    const at::Tensor agrees = wr[i].ne(0) & sign.ne(0) & wr[i].sign().eq(sign);
    mixed = mixed + at::where(agrees, wr[i], Zero(total));
    divisor =
        divisor + at::where(agrees, at::full({}, weights[i], total.options()),
                            Zero(total));
  }
  if (normalize) {
    mixed = at::where(divisor.ne(0), mixed / divisor, mixed);
  }
  return mixed * lambda;
}

at::Tensor BreadcrumbsMask(const at::Tensor& delta, double density,
                           double gamma, CountRule rule) {
  const int64_t n = delta.numel();
  if (density >= 1) {
    return at::ones(delta.sizes(), delta.options().dtype(at::kBool));
  }
  const int64_t target = RuleCount(rule, density, n);
  int64_t top = RuleCount(rule, gamma, n);
  int64_t bottom = n - target - top;
  if (bottom < 0) {
    top += bottom;
    bottom = 0;
  }
  // Ranked by |D| descending, ties to the lower index (TopKAbsMaskFlat):
  // the first n - bottom minus the first `top`.
  const at::Tensor upper = TopKAbsMaskFlat(delta, n - bottom);
  const at::Tensor outliers = TopKAbsMaskFlat(delta, top);
  return upper & outliers.logical_not();
}

at::Tensor DellaKeepProbabilities(const at::Tensor& delta, double density,
                                  double epsilon) {
  const int64_t rows = delta.dim() >= 2 ? delta.size(0) : 1;
  const at::Tensor mag =
      delta.to(at::kDouble).abs().reshape({rows, -1}).contiguous();
  const int64_t c = mag.size(1);
  // Ascending, stable: equal magnitudes rank in index order.
  const at::Tensor order =
      std::get<1>(at::sort(mag, c10::optional<bool>(true), /*dim=*/1,
                           /*descending=*/false));
  at::Tensor rank = at::empty_like(mag);
  rank.scatter_(1, order,
                at::arange(c, mag.options()).unsqueeze(0).expand({rows, c}));
  at::Tensor prob = c > 1
                        ? (rank / static_cast<double>(c - 1)) * (2 * epsilon) +
                              (density - epsilon)
                        : at::full_like(rank, density);
  return prob.reshape(delta.sizes());
}

MergedDelta MergekitMerge(const MergekitParams& params, const at::Tensor& pre,
                          const std::vector<at::Tensor>& deltas,
                          absl::string_view tensor_name) {
  at::Tensor delta;
  switch (params.method) {
    case Method::kTies:
      delta = TiesGeneral(deltas, params);
      break;
    case Method::kBreadcrumbs:
      delta = Breadcrumbs(deltas, params);
      break;
    case Method::kDella:
      delta = Della(deltas, params, tensor_name);
      break;
    default: {
      // The elementwise methods: ChunkedMergekit fed the tensor as one chunk.
      ChunkedMergekit m(params, static_cast<int64_t>(deltas.size()),
                        tensor_name);
      const at::Tensor flat_pre = pre.reshape({-1});
      std::vector<at::Tensor> flat;
      for (const at::Tensor& d : deltas) flat.push_back(d.reshape({-1}));
      if (m.NeedsStatistics()) {
        std::vector<at::Tensor> host;
        for (const at::Tensor& d : flat) {
          host.push_back(d.to(at::kCPU).contiguous());
        }
        m.AddStatistics(flat_pre.to(at::kCPU).contiguous(), host);
        m.EndStatistics();
      }
      delta = m.Merge(flat_pre, flat).reshape(pre.sizes());
      break;
    }
  }
  return {delta.ne(0), delta};
}

ChunkedMergekit::ChunkedMergekit(const MergekitParams& params, int64_t tasks,
                                 absl::string_view tensor_name)
    : p_(params), tasks_(tasks) {
  if (p_.method == Method::kDareTies) {
    for (int64_t i = 0; i < tasks; ++i) {
      generators_.push_back(at::make_generator<at::CPUGeneratorImpl>(
          DrawSeed(p_.seed, tensor_name, static_cast<uint64_t>(i))));
    }
  }
  if (p_.method == Method::kSlerp) stats_.assign(3, 0.0);
  if (p_.method == Method::kModelStock) {
    stats_.assign(static_cast<size_t>(tasks + tasks * (tasks - 1) / 2), 0.0);
  }
}

bool ChunkedMergekit::NeedsStatistics() const {
  return p_.method == Method::kSlerp || p_.method == Method::kModelStock;
}

void ChunkedMergekit::AddStatistics(const at::Tensor& pre,
                                    const std::vector<at::Tensor>& deltas) {
  if (p_.method == Method::kSlerp) {
    SlerpStatistics(pre, deltas[0], stats_);
    return;
  }
  const size_t n = deltas.size();
  size_t k = n;
  for (size_t i = 0; i < n; ++i) {
    stats_[i] = Dot(deltas[i], deltas[i], stats_[i]);
    for (size_t j = i + 1; j < n; ++j, ++k) {
      stats_[k] = Dot(deltas[i], deltas[j], stats_[k]);
    }
  }
}

// SLERP (Shoemake, "Animating Rotation with Quaternion Curves", SIGGRAPH
// 1985, eq. for slerp(q0, q1; t) = sin((1-t) theta)/sin theta q0 + sin(t
// theta)/sin theta q1), on the flattened tensors v0 = W_pre, v1 = W_ft as
// mergekit applies it: cos theta from the normalised vectors (a norm <= 1e-8
// is not normalised), plain lerp (1-t) v0 + t v1 when |cos theta| >
// 0.9995. In deltas: fused - pre = (s0 + s1 - 1) pre + s1 D.
//
// Model Stock (Jang, Yun and Han, "Model Stock: All we need is just a few
// fine-tuned models", ECCV 2024, arXiv:2403.19522, eq. 6: t = k cos theta /
// (1 + (k - 1) cos theta), W_H = t W_avg + (1 - t) W_0), over the whole
// tensor as mergekit's default (filter_wise: false): cos theta the mean of
// the pairwise cosines of the task vectors (each clamped to [-1, 1], norms
// floored at 1e-6 as mergekit); delta = t * mean_i D_i; t = 0 where the
// denominator is 0.
void ChunkedMergekit::EndStatistics() {
  if (p_.method == Method::kSlerp) {
    const double n0 = std::sqrt(stats_[0]), n1 = std::sqrt(stats_[1]);
    const double dot =
        stats_[2] / ((n0 > kSlerpEps ? n0 : 1.0) * (n1 > kSlerpEps ? n1 : 1.0));
    const double t = p_.t;
    if (std::fabs(dot) > kSlerpDotThreshold) {
      slerp_a_ = 0;  // lerp: (1 - t) pre + t ft = pre + t D
      slerp_b_ = t;
      return;
    }
    const double theta = std::acos(dot);
    const double s0 = std::sin((1 - t) * theta) / std::sin(theta);
    const double s1 = std::sin(t * theta) / std::sin(theta);
    slerp_a_ = s0 + s1 - 1;
    slerp_b_ = s1;
    return;
  }
  // Model Stock.
  const size_t tasks = static_cast<size_t>(tasks_);
  double cos_sum = 0;
  size_t k = tasks, pairs = 0;
  for (size_t i = 0; i < tasks; ++i) {
    for (size_t j = i + 1; j < tasks; ++j, ++k, ++pairs) {
      const double norms = std::max(std::sqrt(stats_[i]) * std::sqrt(stats_[j]),
                                    kStockNormFloor);
      cos_sum += std::clamp(stats_[k] / norms, -1.0, 1.0);
    }
  }
  const double cos = cos_sum / static_cast<double>(pairs);
  const double den = 1 + (static_cast<double>(tasks) - 1) * cos;
  stock_ratio_ = den == 0 ? 0 : static_cast<double>(tasks) * cos / den;
}

// Linear (mergekit's `linear`; Wortsman et al., "Model soups", ICML 2022,
// arXiv:2203.05482, the weighted uniform soup): fused = sum_i w_i W_i /
// sum_i w_i; in deltas sum_i w_i D_i / sum_i w_i, or without normalize
// sum_i w_i D_i + (sum_i w_i - 1) W_pre.
//
// Task arithmetic with weights (Ilharco et al., "Editing Models with Task
// Arithmetic", ICLR 2023, arXiv:2212.04089): lambda * sum_i w_i D_i
// (normalize: / sum_i w_i).
//
// DARE-TIES (Yu et al., "Language Models are Super Mario: Absorbing
// Abilities from Homologous Models as a Free Lunch", ICML 2024,
// arXiv:2311.03099, eq. 2: drop each entry with probability p, rescale the
// survivors by 1 / (1 - p)), then TIES's election and disjoint merge
// (ElectAndMerge) as mergekit's dare_ties; the draw is DARE's (Dare() in
// merge_methods.h: u >= p survives).
at::Tensor ChunkedMergekit::Merge(const at::Tensor& pre,
                                  std::vector<at::Tensor>& deltas) {
  switch (p_.method) {
    case Method::kLinear: {
      at::Tensor mixed = WeightedSum(deltas, p_.weights);
      const double sum = Sum(p_.weights);
      if (p_.normalize) return mixed / sum;
      return mixed + pre * (sum - 1);
    }
    case Method::kSlerp:
      return pre * slerp_a_ + deltas[0] * slerp_b_;
    case Method::kModelStock: {
      at::Tensor sum = deltas[0];
      for (size_t i = 1; i < deltas.size(); ++i) sum = sum + deltas[i];
      return sum * (stock_ratio_ / static_cast<double>(deltas.size()));
    }
    case Method::kDareTies: {
      std::vector<at::Tensor> kept;
      for (size_t i = 0; i < deltas.size(); ++i) {
        const at::Tensor& d = deltas[i];
        const at::Tensor survive =
            Uniform(d, generators_[i]).ge(p_.drop).reshape(d.sizes());
        kept.push_back(
            at::where(survive.to(d.device()), d / (1.0 - p_.drop), Zero(d)));
      }
      return ElectAndMerge(kept, p_.weights, p_.normalize, p_.sign_cancel,
                           p_.lambda);
    }
    default:  // kTaskArithmetic
      return Combine(deltas, p_);
  }
}

}  // namespace tailor
