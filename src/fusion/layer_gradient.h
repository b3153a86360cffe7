#ifndef TAILOR_FUSION_LAYER_GRADIENT_H_
#define TAILOR_FUSION_LAYER_GRADIENT_H_

// Per-layer parameters (issue #19 point 3): a parameter given as a list of
// values ("gradient") varies linearly over the layer index, with mergekit's
// semantics (github.com/arcee-ai/mergekit, mergekit/config.py
// evaluate_setting and mergekit/plan.py plan_slice / plan_module):
//   - layer i of L has position t = i / (L - 1) (t = 1 when L == 1);
//     a tensor outside every layer (embeddings, the final norm, lm_head)
//     has t = 0, so it gets the list's first value;
//   - a list v_0 .. v_{n-1} at t is linear between anchors spread evenly
//     over [0, 1]: s = t (n - 1), i0 = floor(s), i1 = min(n - 1, i0 + 1),
//     value = (1 - (s - i0)) v_i0 + (s - i0) v_i1.
// Torch-free (tailor_spec).

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace tailor {

// The longest list a per-layer parameter may hold.
inline constexpr size_t kMaxGradientValues = 1024;

// The per-layer lists of a job (FusionSpec::gradients); an empty list: the
// parameter's scalar applies to every tensor.
struct LayerGradients {
  std::vector<double> keep;     // tailor, magnitude: rho
  std::vector<double> omega;    // tailor
  std::vector<double> lambda;   // the task-arithmetic scale
  std::vector<double> density;  // ties, breadcrumbs, della, dare_ties...
  std::vector<double> t;        // slerp
  bool empty() const {
    return keep.empty() && omega.empty() && lambda.empty() && density.empty() &&
           t.empty();
  }
};

// OK for a list of 1..kMaxGradientValues values, else INVALID_ARGUMENT
// naming `field`.
absl::Status CheckGradientLength(size_t n, absl::string_view field);

// The layer index of a tensor: the first all-digit component of its
// dot-separated name that has a component before and after it
// ("model.layers.7.mlp.up_proj.weight", "transformer.h.7.attn.c_attn.weight",
// "gpt_neox.layers.7.attention.dense.weight", "model.decoder.layers.7..."),
// as mergekit's automatic architectures find it (RE_LAYER_INDEX, `\.(\d+)\.`,
// mergekit/architecture/auto.py). nullopt for a tensor outside the layers
// (or an index of more than 9 digits).
std::optional<int64_t> LayerIndexOf(absl::string_view tensor_name);

// The number of layers of a checkpoint: `num_hidden_layers` of its
// config.json text when `config_json` is given and holds one (a positive
// integer, at most 2^20), else the largest LayerIndexOf over `names` + 1 (0
// when no name has one). A config.json that is not a JSON object, or a
// num_hidden_layers that is not such an integer, or smaller than a tensor's
// layer index + 1, is INVALID_ARGUMENT naming `config_name`.
absl::StatusOr<int64_t> CountLayers(
    const std::vector<std::string>& names,
    const std::optional<std::string>& config_json,
    absl::string_view config_name);

// The gradient position t in [0, 1] of layer `layer` (nullopt: not in a
// layer) of `num_layers`. REQUIRES: *layer < num_layers.
double GradientPosition(std::optional<int64_t> layer, int64_t num_layers);

// The value of the list `values` at position t in [0, 1] (above).
// REQUIRES: !values.empty().
double EvaluateGradient(const std::vector<double>& values, double t);

}  // namespace tailor

#endif  // TAILOR_FUSION_LAYER_GRADIENT_H_
