#ifndef TAILOR_FUSION_SPEC_GRADIENTS_H_
#define TAILOR_FUSION_SPEC_GRADIENTS_H_

// A FusionSpec's per-layer parameters (FusionSpec::gradients, issue #19
// point 3; the interpolation: layer_gradient.h): their JSON form (a key
// holds a number or a list of numbers), their validation and the spec of
// one tensor. Torch-free (tailor_spec).

#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"
#include "fusion/fusion_spec.h"
#include "nlohmann/json.hpp"

namespace tailor {

// The spec keys that may hold a list: keep, omega, lambda, density, t.
const std::vector<absl::string_view>& GradientKeys();

// The list of `key` (one of GradientKeys()) in `g`.
std::vector<double>& GradientOf(LayerGradients& g, absl::string_view key);
const std::vector<double>& GradientOf(const LayerGradients& g,
                                      absl::string_view key);

// The scalar of `key` (one of GradientKeys()) in `spec`.
double ScalarOf(const FusionSpec& spec, absl::string_view key);

// Reads the JSON value of spec key `key`: a number into *scalar (and the
// list cleared), or a list of 1..kMaxGradientValues numbers into *list
// (the scalar untouched). Anything else is INVALID_ARGUMENT naming `key`
// (or key[i]).
absl::Status ReadNumberOrList(const nlohmann::json& v, absl::string_view key,
                              double* scalar, std::vector<double>* list);

// INVALID_ARGUMENT naming key[i] for a value out of its parameter's range
// (the scalar's rule: keep (0, 1], omega [0, 1], lambda finite > 0, density
// (0, 1] and della's density +- epsilon within (0, 1], t [0, 1]) or a list
// longer than kMaxGradientValues. The values between two anchors lie
// between them, so checking the anchors checks every layer.
absl::Status ValidateGradients(const FusionSpec& spec);

// Writes each non-empty list of spec.gradients over its key in `j` (a
// ToJson() object).
void GradientsToJson(const FusionSpec& spec, nlohmann::json* j);

// The spec of a tensor at gradient position t (GradientPosition): every
// parameter with a list set to the list's value at t, the lists cleared.
FusionSpec SpecAtPosition(const FusionSpec& spec, double t);

}  // namespace tailor

#endif  // TAILOR_FUSION_SPEC_GRADIENTS_H_
