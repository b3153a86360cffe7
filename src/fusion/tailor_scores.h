#ifndef TAILOR_FUSION_TAILOR_SCORES_H_
#define TAILOR_FUSION_TAILOR_SCORES_H_

// Scoring and selection for the Model Tailor kernel (src/DESIGN.md §2.1):
// the fused salience + sensitivity score and the top-k mask per scope.

#include <ATen/core/Tensor.h>

#include <cstdint>

#include "fusion/layer_options.h"

namespace tailor {

// k = round(rho * n), half away from zero, clamped to [0, n].
int64_t KeepCount(double keep_ratio, int64_t n);

// Fused score omega * norm(|D|) + (1 - omega) * norm(D^2 / (2 hinv_diag_j)),
// normalised per options (hinv_diag undefined: salience only). D is r x c.
at::Tensor FusedScores(const at::Tensor& d, const at::Tensor& hinv_diag,
                       const TailorOptions& options);

// FusedScores normalised for selection in `scope` rather than
// options.scope (a block-scope caller passes one block, normalised as a
// whole); `diag` undefined or options.omega >= 1: salience only. On the CPU
// with min-max normalisation, one two-pass loop with the tensor ops'
// arithmetic (the same bits).
at::Tensor ScoresWithDiag(const at::Tensor& d, const at::Tensor& diag,
                          const TailorOptions& options, Scope scope);

// ScoresWithDiag of the live columns only (where `dead`, bool [c], is
// false), as if the dead ones were not there: they do not enter the
// normalisation (z-score blocks are then blocks of live columns); the dead
// columns' scores are -inf. `dead` undefined: ScoresWithDiag itself.
at::Tensor LiveScores(const at::Tensor& d, const at::Tensor& diag,
                      const TailorOptions& options, Scope scope,
                      const at::Tensor& dead);

// Top-k mask of `scores` (r x c) per options.scope; ties go to the lower
// row-major index. For Scope::kBlock, each block of block_size columns (all
// rows) keeps round(rho * its size).
at::Tensor SelectMask(const at::Tensor& scores, const TailorOptions& options);

// The top KeepCount(keep_ratio, numel) entries of `scores` as a whole.
at::Tensor SelectBlock(const at::Tensor& scores, double keep_ratio);

// SelectMask / SelectBlock never choosing an entry of a column where
// `dead` (bool [columns of scores]; undefined: none) is true: those entries
// rank last (-inf) and each scope keeps min(k, its live entries), k the
// same round(rho * |scope|) as without dead columns, so the budget goes to
// live entries (src/DESIGN.md §2.2).
at::Tensor SelectMask(const at::Tensor& scores, const TailorOptions& options,
                      const at::Tensor& dead);
at::Tensor SelectBlock(const at::Tensor& scores, double keep_ratio,
                       const at::Tensor& dead);

}  // namespace tailor

#endif  // TAILOR_FUSION_TAILOR_SCORES_H_
