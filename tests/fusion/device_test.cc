// The device-generic paths on the device TAILOR_TEST_DEVICE names (CPU by
// default; scripts/gpu-check sets "cuda"): the kernel and whole fusion jobs
// there agree with the same work on the CPU.

#include <ATen/ATen.h>
#include <c10/core/impl/VirtualGuardImpl.h>
#include <gtest/gtest.h>
#include <sys/stat.h>

#include <map>
#include <string>
#include <vector>

#include "fusion/fusion_job.h"
#include "fusion/tailor_kernel.h"
#include "io/checkpoint.h"
#include "storage/uri_resolver.h"
#include "testing/test_device.h"
#include "testing/test_util.h"
#include "util/device_stream.h"
#include "util/file_util.h"

namespace tailor {
namespace {

using ::tailor::testing::RawTensor;
using ::tailor::testing::SerializeSafetensors;
using ::tailor::testing::TempDir;
using ::tailor::testing::TestDevice;
using ::tailor::testing::TestDeviceFrom;
using ::tailor::testing::TestDeviceName;
using ::tailor::testing::ToRaw;
using ::tailor::testing::WriteFileOrDie;
using ::tailor::testing::WriteShardedCheckpoint;

double RelativeDifference(const at::Tensor& a, const at::Tensor& b) {
  at::Tensor x = a.cpu().to(at::kDouble), y = b.cpu().to(at::kDouble);
  const double scale = std::max(y.norm().item<double>(), 1e-30);
  return (x - y).norm().item<double>() / scale;
}

// On an accelerator the scope makes a pooled stream current for this
// thread and restores the previous one; on the CPU it changes nothing. Work
// queued inside it is complete when it ends.
TEST(DeviceStreamScopeTest, PoolStreamWhileAliveThenTheOldOne) {
  const c10::Device device = TestDevice();
  c10::impl::VirtualGuardImpl impl(device.type());
  const c10::Stream before = impl.getStream(device);
  at::Tensor y;
  {
    DeviceStreamScope scope(device);
    const c10::Stream inside = impl.getStream(device);
    if (device.is_cpu()) {
      EXPECT_EQ(inside, before);
    } else {
      EXPECT_NE(inside, before) << "no stream of its own on " << device;
    }
    at::Tensor x = at::ones({256, 256}, at::TensorOptions().device(device));
    y = at::matmul(x, x);
  }
  EXPECT_EQ(impl.getStream(device), before);
  EXPECT_EQ(y.cpu()[0][0].item<float>(), 256.0f);
}

TEST(TestDeviceTest, ParsesTheVariable) {
  EXPECT_EQ(*TestDeviceFrom(nullptr), c10::Device("cpu"));
  EXPECT_EQ(*TestDeviceFrom(""), c10::Device("cpu"));
  EXPECT_EQ(*TestDeviceFrom("cpu"), c10::Device("cpu"));
  EXPECT_EQ(TestDeviceFrom("gpu").status().code(),
            absl::StatusCode::kInvalidArgument);
  if (!at::hasCUDA()) {
    // Asked for CUDA where there is none: an error, not the CPU.
    EXPECT_EQ(TestDeviceFrom("cuda").status().code(),
              absl::StatusCode::kFailedPrecondition);
  } else {
    EXPECT_EQ(*TestDeviceFrom("cuda"), c10::Device("cuda:0"));
  }
  std::printf("device-generic cases run on %s\n", TestDeviceName().c_str());
}

struct Layer {
  at::Tensor w_pre, w_ft, h;
};

Layer RandomLayer(int64_t rows, int64_t cols, uint64_t seed) {
  at::manual_seed(seed);
  at::Tensor x = at::randn({4 * cols, cols}, at::kDouble)
                     .matmul(at::eye(cols, at::kDouble) +
                             0.5 * at::randn({cols, cols}, at::kDouble));
  Layer l;
  l.h = 2.0 / (4 * cols) * x.t().matmul(x);
  l.w_pre = at::randn({rows, cols}, at::kDouble);
  l.w_ft = l.w_pre + 0.1 * at::randn({rows, cols}, at::kDouble);
  return l;
}

absl::StatusOr<LayerResult> RunOn(const c10::Device& device, const Layer& l,
                                  const TailorOptions& o, at::ScalarType type) {
  return TailorLayer("w", l.w_pre.to(device, type), l.w_ft.to(device, type),
                     l.h.to(device, type), o);
}

TEST(DeviceKernelTest, TailorLayerOnTheTestDeviceMatchesTheCpu) {
  const c10::Device device = TestDevice();
  struct Case {
    Scope scope;
    Compensation compensation;
  };
  const std::vector<Case> cases = {{Scope::kLayer, Compensation::kSequential},
                                   {Scope::kRow, Compensation::kExact},
                                   {Scope::kBlock, Compensation::kSequential},
                                   {Scope::kLayer, Compensation::kNone}};
  int seed = 1;
  for (const Case& c : cases) {
    for (bool f64 : {true, false}) {
      SCOPED_TRACE(::testing::Message()
                   << "scope " << ScopeName(c.scope) << ", compensation "
                   << CompensationName(c.compensation) << ", float64 " << f64
                   << ", device " << device);
      const Layer l = RandomLayer(48, 160, seed++);
      TailorOptions o;
      o.keep_ratio = 0.2;
      o.scope = c.scope;
      o.compensation = c.compensation;
      o.float64 = f64;
      o.block_size = 32;
      const at::ScalarType type = f64 ? at::kDouble : at::kFloat;
      auto on_device = RunOn(device, l, o, type);
      auto on_cpu = RunOn(c10::Device("cpu"), l, o, type);
      ASSERT_TRUE(on_device.ok()) << on_device.status();
      ASSERT_TRUE(on_cpu.ok()) << on_cpu.status();
      EXPECT_EQ(on_device->delta.device(), device);
      EXPECT_EQ(on_device->mask.device(), device);
      EXPECT_EQ(on_device->stats.kept, on_cpu->stats.kept);
      EXPECT_EQ(on_device->stats.compensation, on_cpu->stats.compensation);
      // Scores differ by rounding between devices: masks may differ at
      // near-ties (never in float64 on this data), deltas to rounding.
      const int64_t mismatched =
          on_device->mask.cpu().ne(on_cpu->mask).sum().item<int64_t>();
      EXPECT_LE(mismatched, f64 ? 0 : on_cpu->stats.kept / 100);
      if (mismatched == 0) {
        EXPECT_LT(RelativeDifference(on_device->delta, on_cpu->delta),
                  f64 ? 1e-9 : 1e-3);
      }
      EXPECT_NEAR(
          on_device->stats.error_compensated, on_cpu->stats.error_compensated,
          (f64 ? 1e-8 : 1e-2) * std::max(1.0, on_cpu->stats.error_compensated));
    }
  }
}

TEST(DeviceKernelTest, PreparedHessianStaysOnTheTestDevice) {
  const c10::Device device = TestDevice();
  const Layer l = RandomLayer(8, 64, 99);
  TailorOptions o;
  o.float64 = true;
  auto on_device = PrepareHessian(l.h.to(device), o);
  auto on_cpu = PrepareHessian(l.h, o);
  ASSERT_TRUE(on_device.ok() && on_cpu.ok());
  EXPECT_EQ(on_device->u.device(), device);
  EXPECT_LT(RelativeDifference(on_device->u, on_cpu->u), 1e-9);
  EXPECT_LT(RelativeDifference(on_device->hinv_diag, on_cpu->hinv_diag), 1e-9);
}

// A small two-shard checkpoint pair with a calibration file, fused on the
// test device and on the CPU by every method.
class DeviceFusionJobTest : public ::testing::Test {
 protected:
  static constexpr int64_t kHidden = 32, kInter = 48;

  void SetUp() override {
    at::manual_seed(7);
    const std::vector<std::pair<std::string, std::vector<int64_t>>> linears = {
        {"model.layers.0.self_attn.q_proj.weight", {kHidden, kHidden}},
        {"model.layers.0.mlp.up_proj.weight", {kInter, kHidden}},
        {"model.layers.0.mlp.down_proj.weight", {kHidden, kInter}}};
    std::map<std::string, at::Tensor> pre, ft;
    for (const auto& [name, shape] : linears) pre[name] = at::randn(shape);
    pre["model.norm.weight"] = at::ones({kHidden});
    for (auto& [name, w] : pre) ft[name] = w + 0.3 * at::randn(w.sizes());
    Write(Dir("base"), pre);
    Write(Dir("ft"), ft);
    auto gram = [](int64_t c) {
      at::Tensor x = at::randn({4 * c, c});
      return (2.0 / (4 * c) * x.t().matmul(x)).contiguous();
    };
    hessians_ = tmp_.Join("h.safetensors");
    WriteFileOrDie(
        hessians_,
        SerializeSafetensors(
            {ToRaw("model.layers.0.self_attn.q_proj.hessian", gram(kHidden)),
             ToRaw("model.layers.0.mlp.up_proj.hessian", gram(kHidden)),
             ToRaw("model.layers.0.mlp.down_proj.hessian", gram(kInter))},
            {{"format", "tailor-hessian/1"}, {"nsamples", "128"}}));
  }

  std::string Dir(const std::string& name) {
    const std::string p = tmp_.Join(name);
    ::mkdir(p.c_str(), 0755);
    return p;
  }

  static void Write(const std::string& dir,
                    const std::map<std::string, at::Tensor>& ts) {
    std::vector<RawTensor> a, b;
    for (const auto& [name, w] : ts) {
      (name.find("mlp") != std::string::npos ? b : a)
          .push_back(ToRaw(name, w.to(at::kBFloat16)));
    }
    WriteShardedCheckpoint(dir, {a, b});
  }

  // Fuses with `method` on `device` into <tag>-out; the output's tensors.
  std::map<std::string, at::Tensor> Fuse(Method method,
                                         const std::string& device,
                                         const std::string& tag) {
    FusionSpec spec;
    spec.pretrained_uri = tmp_.Join("base");
    TaskSpec task;
    task.finetuned_uri = tmp_.Join("ft");
    if (method == Method::kTailor) task.hessian_uri = hessians_;
    spec.tasks.push_back(task);
    spec.method = method;
    spec.output_uri = tmp_.Join(tag + "-out");
    spec.report_uri = tmp_.Join(tag + ".report.json");
    spec.device = device;
    auto resolver = UriResolver::Create({tmp_.path()});
    EXPECT_TRUE(resolver.ok());
    auto report = RunFusionJob(spec, *resolver, RunOptions());
    EXPECT_TRUE(report.ok()) << report.status();
    std::map<std::string, at::Tensor> out;
    if (!report.ok()) return out;
    EXPECT_EQ((*report)["totals"]["device"], device) << report->dump();
    auto ckpt = Checkpoint::Open(spec.output_uri);
    EXPECT_TRUE(ckpt.ok()) << ckpt.status();
    if (!ckpt.ok()) return out;
    for (const TensorInfo& t : (*ckpt)->tensors()) {
      auto read = (*ckpt)->Read(t.name);
      EXPECT_TRUE(read.ok()) << read.status();
      if (read.ok()) out[t.name] = *read;
    }
    return out;
  }

  TempDir tmp_;
  std::string hessians_;
};

TEST_F(DeviceFusionJobTest, EveryMethodOnTheTestDeviceMatchesTheCpu) {
  const std::string device = TestDeviceName();
  for (Method method :
       {Method::kTailor, Method::kMagnitude, Method::kTaskArithmetic,
        Method::kTies, Method::kDare}) {
    const std::string name(MethodName(method));
    SCOPED_TRACE(name + " on " + device);
    auto got = Fuse(method, device, name + "-dev");
    auto want = Fuse(method, "cpu", name + "-cpu");
    ASSERT_EQ(got.size(), want.size());
    ASSERT_FALSE(want.empty());
    for (const auto& [tensor, w] : want) {
      ASSERT_EQ(got.count(tensor), 1u) << tensor;
      // BF16 outputs: the devices' roundings may move an entry by one ulp
      // (2^-8 relative); masks may differ at near-ties.
      EXPECT_LT(RelativeDifference(got[tensor], w), 2e-2) << tensor;
    }
  }
}

}  // namespace
}  // namespace tailor
