#include "testing/shard_inputs.h"

#include <ATen/ATen.h>
#include <sys/stat.h>

#include <map>

#include "absl/strings/str_cat.h"
#include "testing/test_util.h"

namespace tailor {
namespace testing {
namespace {

std::string MakeDir(const TempDir& tmp, const std::string& name) {
  const std::string p = tmp.Join(name);
  ::mkdir(p.c_str(), 0755);
  return p;
}

void WriteHessians(const std::string& path, int64_t hidden) {
  std::vector<RawTensor> t;
  for (const char* name : {"model.layers.0.self_attn.q_proj.hessian",
                           "model.layers.2.mlp.up_proj.hessian"}) {
    at::Tensor x = at::randn({100, hidden});
    t.push_back(ToRaw(name, (2.0 / 100 * x.t().matmul(x)).contiguous()));
  }
  WriteFileOrDie(path, SerializeSafetensors(
                           t, {{"format", "tailor-hessian/1"},
                               {"nsamples", "100"},
                               {"aliases",
                                "{\"model.layers.1.self_attn.q_proj.weight\""
                                ": \"model.layers.0.self_attn.q_proj."
                                "hessian\"}"}}));
}

}  // namespace

ShardInputs WriteShardInputs(const TempDir& tmp, int64_t hidden, int64_t inter,
                             int layers) {
  at::manual_seed(11);
  ShardInputs in;
  in.base = MakeDir(tmp, "base");
  std::map<std::string, at::Tensor> pre;
  for (int l = 0; l < layers; ++l) {
    const std::string p = absl::StrCat("model.layers.", l, ".");
    pre[p + "self_attn.q_proj.weight"] = at::randn({hidden, hidden});
    pre[p + "mlp.up_proj.weight"] = at::randn({inter, hidden});
    pre[p + "mlp.down_proj.weight"] = at::randn({hidden, inter});
  }
  pre["model.norm.weight"] = at::ones({hidden});
  WriteBf16TwoShardCheckpoint(in.base, pre);
  for (int t = 0; t < 2; ++t) {
    std::map<std::string, at::Tensor> ft;
    for (auto& [name, w] : pre) ft[name] = w + 0.3 * at::randn(w.sizes());
    const std::string dir = MakeDir(tmp, absl::StrCat("ft", t));
    WriteBf16TwoShardCheckpoint(dir, ft);
    in.finetuned.push_back(dir);
    in.hessians.push_back(tmp.Join(absl::StrCat("h", t)));
    WriteHessians(in.hessians.back(), hidden);
  }
  return in;
}

}  // namespace testing
}  // namespace tailor
