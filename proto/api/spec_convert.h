#ifndef TAILOR_PROTO_API_SPEC_CONVERT_H_
#define TAILOR_PROTO_API_SPEC_CONVERT_H_

// tailor.v1.FusionJobSpec <-> the engine's JSON spec (FusionSpec::FromJson /
// ToJson form). The message's field names are the JSON keys, so the mapping
// is by reflection: enums map METHOD_TASK_ARITHMETIC <-> "task_arithmetic"
// (the value name without the field's prefix, lower case); unset optional
// fields, zero enums and empty strings are left out of the JSON (the engine's
// defaults apply).

#include "absl/status/statusor.h"
#include "nlohmann/json.hpp"
#include "tailor/v1/fusion_service.pb.h"

namespace tailor::api {

// layer_gradients' lists become the values of their scalars' keys (keep:
// [0.1, 0.3]); SpecFromJson moves a list-valued keep, omega, lambda,
// density or t back into layer_gradients.
nlohmann::json SpecToJson(const tailor::v1::FusionJobSpec& spec);

// INVALID_ARGUMENT naming the field when a scalar field and its list in
// layer_gradients are both set (SpecToJson keeps the list).
absl::Status CheckLayerGradients(const tailor::v1::FusionJobSpec& spec);

// INVALID_ARGUMENT naming the key for unknown keys, wrong JSON types and
// unknown enum spellings.
absl::StatusOr<tailor::v1::FusionJobSpec> SpecFromJson(
    const nlohmann::json& json);

}  // namespace tailor::api

#endif  // TAILOR_PROTO_API_SPEC_CONVERT_H_
