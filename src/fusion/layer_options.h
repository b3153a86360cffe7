#ifndef TAILOR_FUSION_LAYER_OPTIONS_H_
#define TAILOR_FUSION_LAYER_OPTIONS_H_

#include <cstdint>
#include <functional>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace tailor {

// Where top-k selection happens (src/DESIGN.md §2.1).
enum class Scope { kLayer, kRow, kBlock };
// How salience and sensitivity are brought to one scale before fusing.
enum class Normalization { kMinMax, kZScore };
// How the kept entries absorb the reverted ones.
enum class Compensation { kSequential, kExact, kNone };
// What happens to the entries of dead columns (diag(H)_j == 0: input j was
// zero on every calibration row; src/DESIGN.md §2.2, issue #17 point 9).
// kRevert: reverted for free (never kept; the budget goes to live
// entries). kSelect: they compete for the budget like any other entry,
// scored through SparseGPT's fix-up H_jj = 1 (the behaviour before).
enum class DeadColumns { kRevert, kSelect };

// Which Model Tailor (src/DESIGN.md §2.1). kPaper: the paper's algorithm
// (the default). kAuthorsCode: the loop of the authors' released code
// (fusion/authors_variant.h), for reproducing their numbers; its + sign
// raises the reconstruction error. Never the default.
enum class Variant { kPaper, kAuthorsCode };

absl::StatusOr<Scope> ParseScope(absl::string_view text);
absl::StatusOr<Normalization> ParseNormalization(absl::string_view text);
absl::StatusOr<Compensation> ParseCompensation(absl::string_view text);
absl::string_view ScopeName(Scope scope);
absl::string_view NormalizationName(Normalization n);
absl::StatusOr<DeadColumns> ParseDeadColumns(absl::string_view text);
absl::string_view CompensationName(Compensation c);
absl::string_view DeadColumnsName(DeadColumns d);
// "paper" | "authors-code" ("authors_code", the proto enum's spelling, is
// read as "authors-code").
absl::StatusOr<Variant> ParseVariant(absl::string_view text);
absl::string_view VariantName(Variant v);

// omega of the authors' released code (0.8 salience, 0.2 sensitivity).
inline constexpr double kAuthorsCodeOmega = 0.8;

// The knobs of the per-layer Model Tailor kernel.
struct TailorOptions {
  // rho: fraction of the fine-tuned entries kept, in (0, 1].
  double keep_ratio = 0.10;
  // omega: weight of salience against sensitivity, in [0, 1].
  double omega = 0.5;
  Scope scope = Scope::kLayer;
  // kMinMax normalises over the selection scope (the paper); kZScore per row
  // within each block of `block_size` columns (the authors' released code).
  Normalization normalization = Normalization::kMinMax;
  Compensation compensation = Compensation::kSequential;
  DeadColumns dead_columns = DeadColumns::kRevert;
  // lambda: H += lambda * mean(diag H) * I before inversion; >= 0.
  double damp = 0.01;
  // B: columns per lazy-update block (and per selection block for
  // Scope::kBlock, and per z-score group).
  int64_t block_size = 128;
  // Hessian preparation retries with 10x damping while lambda <= this bound;
  // past it the layer falls back to no compensation.
  double max_damp = 10.0;
  // Arithmetic type of the kernel: float32 (default) or float64.
  bool float64 = false;
  // Bound on the scratch memory of exact compensation's batched solves.
  int64_t exact_chunk_bytes = 256ll << 20;
  // Compute the mask-only reconstruction error exactly (an r x c x c GEMM
  // per tensor) instead of estimating it from sampled rows (LayerStats).
  bool exact_errors = false;
  Variant variant = Variant::kPaper;

  // INVALID_ARGUMENT naming the knob and its rule. With
  // Variant::kAuthorsCode: scope block, normalize zscore, compensation
  // sequential and dead_columns select, the authors' code's only settings.
  absl::Status Validate() const;
};

// With options->variant kAuthorsCode, the knobs its code fixes that a spec
// did not give (`given(key)`, the spec's key: "omega", "scope", "normalize",
// "dead_columns") take its values: omega kAuthorsCodeOmega, scope block,
// normalize zscore, dead_columns select. Knobs given keep their values (an
// explicit omega wins; a conflicting scope is then Validate()'s error).
// Nothing for Variant::kPaper.
void ApplyVariantDefaults(const std::function<bool(absl::string_view)>& given,
                          TailorOptions* options);

}  // namespace tailor

#endif  // TAILOR_FUSION_LAYER_OPTIONS_H_
