// Per-layer kernel throughput: Model Tailor's sequential (lazy-batched) and
// exact compensation against a naive unblocked column loop, measured in the
// same run on the same layer; prints times and ratios.
//
//   kernel_bench [--device cpu|cuda] [--keep 0.1] [--shapes
//   4096x4096,4096x11008]
//                [--reps N] [--skip-naive]

#include <ATen/ATen.h>
#include <ATen/Context.h>
#include <ATen/Parallel.h>

#include <chrono>
#include <cstdio>
#include <cstring>
#include <functional>
#include <string>
#include <vector>

#include "fusion/tailor_kernel.h"

namespace {

using Clock = std::chrono::steady_clock;

void Sync(const at::Device& d) {
  // A device-to-host copy waits for queued work on that device.
  if (d.is_cuda()) (void)at::zeros({1}, at::TensorOptions().device(d)).cpu();
}

double TimeIt(const at::Device& d, int reps, const std::function<void()>& fn) {
  double best = 1e300;
  for (int i = 0; i < reps; ++i) {
    Sync(d);
    auto t0 = Clock::now();
    fn();
    Sync(d);
    best = std::min(best,
                    std::chrono::duration<double>(Clock::now() - t0).count());
  }
  return best;
}

// The baseline: OBS one column at a time over the whole matrix, no blocks.
at::Tensor NaiveColumnLoop(const at::Tensor& d0, const at::Tensor& mask,
                           const at::Tensor& u) {
  using at::indexing::Slice;
  at::Tensor d = d0.clone();
  for (int64_t j = 0; j < d.size(1); ++j) {
    at::Tensor w = d.select(1, j);
    at::Tensor err =
        at::where(mask.select(1, j), at::zeros_like(w), w) / u.index({j, j});
    d.index({Slice(), Slice(j, at::indexing::None)})
        .sub_(err.unsqueeze(1) *
              u.index({j, Slice(j, at::indexing::None)}).unsqueeze(0));
    d.select(1, j).masked_fill_(mask.select(1, j).logical_not(), 0);
  }
  return d;
}

}  // namespace

int main(int argc, char** argv) {
  std::string device_name = "cpu", shapes = "4096x4096,4096x11008";
  double keep = 0.1;
  int reps = 1;
  bool naive = true, exact = true;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    auto next = [&] {
      return i + 1 < argc ? std::string(argv[++i]) : std::string();
    };
    if (a == "--device")
      device_name = next();
    else if (a == "--keep")
      keep = std::stod(next());
    else if (a == "--shapes")
      shapes = next();
    else if (a == "--reps")
      reps = std::stoi(next());
    else if (a == "--skip-naive")
      naive = false;
    else if (a == "--skip-exact")
      exact = false;
    else {
      std::fprintf(
          stderr,
          "usage: kernel_bench [--device cpu|cuda] [--keep R] "
          "[--shapes RxC,...] [--reps N] [--skip-naive] [--skip-exact]\n");
      return 2;
    }
  }
  const at::Device device =
      device_name == "cuda" ? at::Device(at::kCUDA, 0) : at::Device(at::kCPU);
  if (device.is_cuda() && !at::hasCUDA()) {
    std::fprintf(stderr, "no CUDA device\n");
    return 1;
  }
  std::printf("device %s, threads %d, keep %.2f, best of %d\n",
              device.str().c_str(), at::get_num_threads(), keep, reps);
  std::printf("%-12s %12s %12s %12s %12s %14s\n", "layer", "naive s",
              "sequential s", "exact s", "naive/seq", "E seq/mask");
  size_t start = 0;
  while (start < shapes.size()) {
    size_t end = shapes.find(',', start);
    if (end == std::string::npos) end = shapes.size();
    const std::string shape = shapes.substr(start, end - start);
    start = end + 1;
    const int64_t rows = std::stoll(shape.substr(0, shape.find('x')));
    const int64_t cols = std::stoll(shape.substr(shape.find('x') + 1));
    at::manual_seed(0);
    auto opts = at::TensorOptions().device(device);
    at::Tensor x = at::randn({2 * cols, cols}, opts);
    at::Tensor h = 2.0 / (2 * cols) * x.t().matmul(x);
    at::Tensor pre = at::randn({rows, cols}, opts);
    at::Tensor ft = pre + 0.01 * at::randn({rows, cols}, opts);
    tailor::TailorOptions o;
    o.keep_ratio = keep;
    auto prepared = tailor::PrepareHessian(h, o);
    if (!prepared.ok()) {
      std::fprintf(stderr, "%s\n", prepared.status().ToString().c_str());
      return 1;
    }
    at::Tensor d0 = ft - pre;
    at::Tensor mask =
        tailor::SelectMask(tailor::FusedScores(d0, prepared->hinv_diag, o), o);
    at::Tensor seq_d;
    const double t_seq = TimeIt(device, reps, [&] {
      seq_d = tailor::CompensateSequential(d0, mask, prepared->u, o.block_size);
    });
    const double t_exact = !exact ? 0 : TimeIt(device, reps, [&] {
      (void)tailor::CompensateExact(d0, mask, prepared->h, o.exact_chunk_bytes);
    });
    double t_naive = 0;
    if (naive) {
      at::Tensor naive_d;
      t_naive = TimeIt(device, reps, [&] {
        naive_d = NaiveColumnLoop(d0, mask, prepared->u);
      });
      const double diff = (naive_d - seq_d).abs().max().item<double>();
      if (diff > 1e-3)
        std::fprintf(stderr, "warning: naive and sequential differ by %g\n",
                     diff);
    }
    const double e_mask =
        tailor::ReconstructionError(d0, d0 * mask, prepared->h);
    const double e_seq = tailor::ReconstructionError(d0, seq_d, prepared->h);
    std::printf(
        "%-12s %12.3f %12.3f %12.3f %12s %14.4f\n", shape.c_str(), t_naive,
        t_seq, t_exact,
        naive ? std::to_string(t_naive / t_seq).substr(0, 6).c_str() : "-",
        e_seq / e_mask);
    std::fflush(stdout);
  }
  return 0;
}
