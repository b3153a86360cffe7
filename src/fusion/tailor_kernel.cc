#include "fusion/tailor_kernel.h"

#include <ATen/ATen.h>

#include <limits>
#include <optional>
#include <tuple>

#include "absl/strings/str_cat.h"
#include "fusion/authors_variant.h"
#include "fusion/kernel_types.h"
#include "util/status_macros.h"
#include "util/stopwatch.h"
#include "util/torch_status.h"

namespace tailor {

namespace {

// Options, shapes and finiteness of a layer's weights; INVALID_ARGUMENT
// naming `name`.
absl::Status CheckLayerInputs(absl::string_view name, const at::Tensor& w_pre,
                              const at::Tensor& w_ft,
                              const TailorOptions& options) {
  if (absl::Status s = options.Validate(); !s.ok()) {
    return absl::InvalidArgumentError(absl::StrCat(name, ": ", s.message()));
  }
  if (w_pre.sizes() != w_ft.sizes()) {
    return absl::InvalidArgumentError(absl::StrCat(
        name, ": pre-trained shape ", c10::str(w_pre.sizes()),
        " differs from fine-tuned shape ", c10::str(w_ft.sizes())));
  }
  return CatchTorch(name, [&]() -> absl::Status {
    TAILOR_RETURN_IF_ERROR(
        CheckFiniteTensor(w_pre, name, "pre-trained tensor"));
    return CheckFiniteTensor(w_ft, name, "fine-tuned tensor");
  });
}

}  // namespace

absl::StatusOr<LayerResult> TailorLayer(absl::string_view name,
                                        const at::Tensor& w_pre,
                                        const at::Tensor& w_ft,
                                        const at::Tensor& hessian,
                                        const TailorOptions& options) {
  if (!hessian.defined()) {
    return TailorLayerPrepared(name, w_pre, w_ft, nullptr, options);
  }
  // The checks in TailorLayerPrepared's order, the Hessian's last.
  TAILOR_RETURN_IF_ERROR(CheckLayerInputs(name, w_pre, w_ft, options));
  const int64_t cols = w_ft.dim() == 2 ? w_ft.size(1) : w_ft.numel();
  if (w_ft.dim() != 2 || hessian.dim() != 2 || hessian.size(0) != cols ||
      hessian.size(1) != cols) {
    return absl::InvalidArgumentError(
        absl::StrCat(name, ": Hessian shape ", c10::str(hessian.sizes()),
                     " does not match the ", cols, " input columns of weight ",
                     c10::str(w_ft.sizes())));
  }
  TAILOR_ASSIGN_OR_RETURN(
      absl::StatusOr<PreparedHessian> prepared,
      CatchTorch(
          name, [&]() -> absl::StatusOr<absl::StatusOr<PreparedHessian>> {
            TAILOR_RETURN_IF_ERROR(CheckFiniteTensor(hessian, name, "Hessian"));
            return PrepareHessian(hessian.to(w_ft.device()), options);
          }));
  return TailorLayerPrepared(name, w_pre, w_ft, &prepared, options);
}

absl::StatusOr<LayerResult> TailorLayerPrepared(
    absl::string_view name, const at::Tensor& w_pre, const at::Tensor& w_ft,
    const absl::StatusOr<PreparedHessian>* hessian,
    const TailorOptions& options) {
  const Stopwatch timer;
  TAILOR_RETURN_IF_ERROR(CheckLayerInputs(name, w_pre, w_ft, options));
  return CatchTorch(name, [&]() -> absl::StatusOr<LayerResult> {
    const at::ScalarType type = KernelType(options);
    at::Tensor d0_full = (w_ft.to(type) - w_pre.to(type));
    // Everything but a 2-D matrix is scored as one row.
    at::Tensor d0 = d0_full.dim() == 2 ? d0_full : d0_full.reshape({1, -1});
    LayerResult result;
    LayerStats& stats = result.stats;
    stats.count = d0.numel();
    stats.error_mask_only = std::numeric_limits<double>::quiet_NaN();
    stats.error_compensated = std::numeric_limits<double>::quiet_NaN();

    const PreparedHessian* prepared = nullptr;
    if (hessian != nullptr) {
      const int64_t c =
          hessian->ok() ? (*hessian)->u.size(0) : d0_full.size(-1);
      if (d0_full.dim() != 2 || c != d0.size(1)) {
        return absl::InvalidArgumentError(absl::StrCat(
            name, ": Hessian shape [", c, ", ", c, "] does not match the ",
            d0.size(1), " input columns of weight ",
            c10::str(d0_full.sizes())));
      }
      stats.has_hessian = true;
      if (hessian->ok()) {
        prepared = &**hessian;
        stats.damp = prepared->damp;
        stats.dead_columns = prepared->dead_columns;
      } else {
        stats.fallback_reason = std::string(hessian->status().message());
      }
    }

    // Dead columns reverted for free (src/DESIGN.md §2.2, issue #17 point
    // 9): their deltas are zeroed before scoring, selection and
    // compensation, as SparseGPT zeroes W[:, dead]. H's row and column
    // there are zero, so no other entry moves and E gains nothing.
    at::Tensor dead;
    auto zero_dead = [&](at::Tensor& d) {
      if (dead.defined()) d.masked_fill_(dead.unsqueeze(0), 0);
    };
    if (prepared && prepared->revert_dead.defined()) {
      dead = prepared->revert_dead.to(d0.device());
      stats.dead_entries_reverted =
          (d0.ne(0) & dead.unsqueeze(0)).sum().item<int64_t>();
      zero_dead(d0);
    }

    at::Tensor mask, delta;
    // ||Err||_F^2 of sequential compensation, when it ran.
    std::optional<double> err_sq;
    const int64_t sample = options.exact_errors ? d0.size(0) : kErrorSampleRows;
    if (prepared && options.variant == Variant::kAuthorsCode) {
      // The authors' loop (authors_variant.h). Under its + sign ||Err||^2
      // is not E: E is measured.
      std::tie(mask, delta) = AuthorsCodeLayer(
          d0, w_pre.to(type).reshape(d0.sizes()), *prepared, options);
      stats.compensation = "authors-code";
      stats.error_mask_only = MaskOnlyError(d0, mask, prepared->h, sample,
                                            &stats.error_mask_only_estimated);
      err_sq = ReconstructionError(d0, delta, prepared->h);
    } else if (prepared && options.scope == Scope::kBlock &&
               options.compensation == Compensation::kSequential) {
      double e = 0;
      std::tie(mask, delta) =
          SelectAndCompensateBlocks(d0, *prepared, options, &e);
      err_sq = e;
      stats.compensation = "sequential";
      stats.error_mask_only = MaskOnlyError(d0, mask, prepared->h, sample,
                                            &stats.error_mask_only_estimated);
    } else {
      TailorOptions select = options;
      if (!prepared) select.omega = 1.0;
      mask = SelectMask(
          LiveScores(d0, prepared ? prepared->hinv_diag : at::Tensor(), select,
                     options.scope, dead),
          options, dead);
      if (prepared) {
        // Before any compensation: the sequential one runs in place on d0.
        stats.error_mask_only = MaskOnlyError(d0, mask, prepared->h, sample,
                                              &stats.error_mask_only_estimated);
      }
      if (prepared && options.compensation == Compensation::kSequential) {
        d0 = d0.contiguous();
        err_sq = CompensateSequentialInPlace(d0, mask, prepared->u,
                                             options.block_size);
        delta = d0;
        d0 = at::Tensor();  // now the compensated delta
        stats.compensation = "sequential";
      } else if (prepared && options.compensation == Compensation::kExact) {
        absl::StatusOr<at::Tensor> exact =
            CompensateExact(d0, mask, prepared->h, options.exact_chunk_bytes);
        if (exact.ok()) {
          delta = *exact;
          stats.compensation = "exact";
        } else {
          stats.fallback_reason = std::string(exact.status().message());
        }
      }
      if (!delta.defined()) {
        delta = at::where(mask, d0, at::zeros({}, d0.options()));
      }
    }
    // The uncompensated delta, again if the sequential loop consumed it.
    auto original = [&] {
      if (d0.defined()) return d0;
      at::Tensor d = w_ft.to(type) - w_pre.to(type);
      if (d.dim() != 2) return d.reshape({1, -1});
      zero_dead(d);
      return d;
    };
    if (!AllFinite(delta.contiguous())) {
      // Never hand out NaN: fall back to the mask alone.
      stats.fallback_reason = "compensation produced non-finite values";
      stats.compensation = "none";
      err_sq.reset();
      at::Tensor d = original();
      delta = at::where(mask, d, at::zeros({}, d.options()));
    }
    if (prepared) {
      if (stats.compensation == "none") {
        stats.error_compensated = stats.error_mask_only;
        stats.error_compensated_estimated = stats.error_mask_only_estimated;
      } else if (err_sq) {
        stats.error_compensated = *err_sq;
      } else {
        stats.error_compensated = ReconstructionError(d0, delta, prepared->h);
      }
    }
    stats.kept = mask.sum().item<int64_t>();
    result.mask = mask.view(d0_full.sizes());
    result.delta = delta.view(d0_full.sizes());
    stats.seconds = timer.Seconds();
    return result;
  });
}

}  // namespace tailor
