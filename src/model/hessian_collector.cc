#include "model/hessian_collector.h"

#include <ATen/ATen.h>

#include <cstring>
#include <utility>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "io/calibration_file.h"
#include "util/status_macros.h"
#include "util/torch_status.h"

namespace tailor {
namespace {

// Weight-name suffix -> the sibling whose Hessian it shares.
constexpr std::pair<const char*, const char*> kAliasRules[] = {
    {"self_attn.k_proj.weight", "self_attn.q_proj.hessian"},
    {"self_attn.v_proj.weight", "self_attn.q_proj.hessian"},
    {"mlp.gate_proj.weight", "mlp.up_proj.hessian"},
};

// The aliased key for `weight_name`, when a rule applies.
std::optional<std::string> AliasFor(absl::string_view weight_name) {
  for (const auto& [suffix, target] : kAliasRules) {
    if (absl::EndsWith(weight_name, suffix)) {
      const absl::string_view prefix =
          weight_name.substr(0, weight_name.size() - strlen(suffix));
      return absl::StrCat(prefix, target);
    }
  }
  return std::nullopt;
}

}  // namespace

std::optional<std::string> HessianCollector::KeyFor(
    absl::string_view weight_name) {
  std::optional<std::string> key = HessianKeyOf(weight_name);
  if (!key.has_value()) return std::nullopt;
  if (std::optional<std::string> alias = AliasFor(weight_name)) return alias;
  return key;
}

void HessianCollector::Fail(absl::Status status) {
  if (status_.ok()) status_ = std::move(status);
}

void HessianCollector::OnLinearInput(const std::string& weight_name,
                                     const at::Tensor& input) {
  if (!status_.ok()) return;
  std::optional<std::string> key = KeyFor(weight_name);
  if (!key.has_value()) {
    Fail(absl::InvalidArgumentError(
        absl::StrCat("hessian collector: '", weight_name,
                     "' is not a weight name (must end with '.weight')")));
    return;
  }
  if (AliasFor(weight_name).has_value()) {
    // Shares the input reported under the key's own weight.
    aliases_[weight_name] = *key;
    return;
  }
  if (input.dim() < 1) {
    Fail(absl::InvalidArgumentError(absl::StrCat(
        "hessian collector: '", weight_name, "' input has no feature axis")));
    return;
  }
  const int64_t c = input.size(-1);
  const at::Tensor x = input.detach().reshape({-1, c}).to(at::kFloat);
  Accumulator& acc = sums_[*key];
  if (!acc.sum.defined()) {
    acc.sum = at::zeros({c, c}, x.options());
  } else if (acc.sum.size(0) != c) {
    Fail(absl::InvalidArgumentError(absl::StrCat(
        "hessian collector: '", weight_name, "' input width changed from ",
        acc.sum.size(0), " to ", c)));
    return;
  }
  acc.sum.addmm_(x.t(), x);
  acc.rows += x.size(0);
}

absl::Status HessianCollector::Calibrate(const LlamaModel& model,
                                         const at::Tensor& tokens) {
  TAILOR_RETURN_IF_ERROR(model.CheckTokens(tokens));
  TAILOR_RETURN_IF_ERROR(CatchTorch("calibration forward", [&] {
    at::NoGradGuard no_grad;
    (void)model.Forward(tokens, this);
  }));
  return status_;
}

int64_t HessianCollector::nsamples() const {
  return sums_.empty() ? 0 : sums_.begin()->second.rows;
}

absl::StatusOr<at::Tensor> HessianCollector::Hessian(
    const std::string& key) const {
  auto it = sums_.find(key);
  if (it == sums_.end()) {
    return absl::NotFoundError(
        absl::StrCat("hessian collector: no statistics for '", key, "'"));
  }
  const Accumulator& acc = it->second;
  return CatchTorch(absl::StrCat("hessian '", key, "'"), [&] {
    // (2/n) * (S + S^T) / 2: exactly symmetric whatever the BLAS rounding.
    return ((acc.sum + acc.sum.t()) * (1.0 / static_cast<double>(acc.rows)))
        .to(at::kCPU, at::kFloat)
        .contiguous();
  });
}

absl::Status HessianCollector::Write(
    const std::string& path, const UriResolver* resolver,
    const std::map<std::string, std::string>& extra_metadata) const {
  TAILOR_RETURN_IF_ERROR(status_);
  if (sums_.empty()) {
    return absl::FailedPreconditionError(
        "hessian collector: no inputs accumulated; run forward passes first");
  }
  const int64_t n = nsamples();
  for (const auto& [key, acc] : sums_) {
    if (acc.rows != n) {
      return absl::FailedPreconditionError(
          absl::StrCat("hessian collector: '", key, "' saw ", acc.rows,
                       " rows but '", sums_.begin()->first, "' saw ", n,
                       "; accumulate whole forward passes"));
    }
  }
  for (const auto& [weight, key] : aliases_) {
    if (sums_.count(key) == 0) {
      return absl::FailedPreconditionError(
          absl::StrCat("hessian collector: '", weight, "' shares '", key,
                       "', whose own weight was never reported"));
    }
  }
  std::map<std::string, int64_t> columns;
  for (const auto& [key, acc] : sums_) columns[key] = acc.sum.size(0);
  return WriteCalibrationFile(
      path, n, columns, aliases_,
      [this](const std::string& key) { return Hessian(key); }, resolver,
      extra_metadata);
}

}  // namespace tailor
