#include "fusion/hessian_prep.h"

#include <ATen/ATen.h>
#include <dlfcn.h>

#include <climits>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "fusion/all_finite.h"
#include "fusion/kernel_types.h"
#include "util/torch_status.h"

namespace tailor {
namespace {

// LAPACK's triangular inverse (xTRTRI), looked up at run time in the LAPACK
// that LibTorch loaded; null when it is not there.
using TrtriFn = void (*)(const char*, const char*, const int*, void*,
                         const int*, int*);
TrtriFn LookupTrtri(bool dbl) {
  static TrtriFn s =
      reinterpret_cast<TrtriFn>(::dlsym(RTLD_DEFAULT, "strtri_"));
  static TrtriFn d =
      reinterpret_cast<TrtriFn>(::dlsym(RTLD_DEFAULT, "dtrtri_"));
  return dbl ? d : s;
}

// L^-1 for a lower-triangular L (c x c), or an undefined tensor when the
// inverse is not finite.
at::Tensor LowerInverse(at::Tensor l) {
  const int64_t c = l.size(0);
  TrtriFn trtri = LookupTrtri(l.scalar_type() == at::kDouble);
  at::Tensor inv;
  if (l.device().is_cpu() && trtri != nullptr && c <= INT32_MAX) {
    // In place on the factor (no copy): LAPACK reads column-major, so a
    // column-major L is inverted as the lower triangle ("L"); a row-major
    // one is column-major L^T, inverted as the upper ("U"), which leaves
    // (L^T)^-1 = (L^-1)^T column-major, i.e. L^-1 row-major. The other
    // triangle stays zero either way.
    const char* uplo = "L";
    if (!(l.stride(0) == 1 && l.stride(1) == c)) {
      l = l.contiguous();
      uplo = "U";
    }
    const int n = static_cast<int>(c);
    int info = 0;
    trtri(uplo, "N", &n, l.data_ptr(), &n, &info);
    if (info != 0) return at::Tensor();
    inv = l;
  } else {
    inv = at::linalg_solve_triangular(l, at::eye(c, l.options()),
                                      /*upper=*/false);
  }
  if (!AllFinite(inv.is_contiguous() ? inv : inv.t())) return at::Tensor();
  return inv;
}

// diag(H^-1)_j = sum_i U_ij^2, accumulated in float64 row by row on the CPU.
at::Tensor ColumnSquareSums(const at::Tensor& u) {
  if (!CpuFastPath(u)) return u.square().sum(0);
  const at::Tensor c = u.contiguous();
  const int64_t n = c.size(0), m = c.size(1);
  std::vector<double> acc(m, 0.0);
  auto run = [&](auto* p) {
    for (int64_t i = 0; i < n; ++i) {
      const auto* row = p + i * m;
      for (int64_t j = 0; j < m; ++j) {
        acc[j] += static_cast<double>(row[j]) * static_cast<double>(row[j]);
      }
    }
  };
  if (c.scalar_type() == at::kFloat) {
    run(c.data_ptr<float>());
  } else {
    run(c.data_ptr<double>());
  }
  return at::tensor(acc, at::TensorOptions().dtype(at::kDouble))
      .to(c.scalar_type());
}

}  // namespace

int64_t PreparedHessian::bytes() const {
  int64_t n = 0;
  for (const at::Tensor* t : {&h, &hinv_diag, &u, &revert_dead}) {
    if (t->defined()) n += t->numel() * t->element_size();
  }
  return n;
}

absl::StatusOr<PreparedHessian> PrepareHessian(const at::Tensor& h_in,
                                               const TailorOptions& options) {
  return CatchTorch(
      "prepare hessian", [&]() -> absl::StatusOr<PreparedHessian> {
        at::Tensor h = h_in.to(KernelType(options)).clone();
        at::Tensor diag = h.diagonal();
        at::Tensor dead = diag == 0;
        PreparedHessian out;
        out.dead_columns = dead.sum().item<int64_t>();
        double mean_diag = 0;
        if (out.dead_columns > 0 &&
            options.dead_columns == DeadColumns::kRevert) {
          // Over the live columns (1 when none is: nothing is kept then).
          const int64_t live = h.size(0) - out.dead_columns;
          mean_diag = live > 0 ? diag.sum().item<double>() / live : 1.0;
          out.revert_dead = dead;
        }
        diag.masked_fill_(dead, 1.0);
        if (!out.revert_dead.defined()) {
          mean_diag = diag.mean().item<double>();
        }
        double damp = options.damp;
        for (;;) {
          at::Tensor damped = h.clone();
          damped.diagonal().add_(damp * mean_diag);
          // L L^T = J H J (J reverses the order); U = J L^-1 J.
          auto [l, info] = at::linalg_cholesky_ex(damped.flip({0, 1}));
          if (info.item<int64_t>() == 0) {
            at::Tensor linv = LowerInverse(std::move(l));
            if (linv.defined()) {
              out.u = linv.flip({0, 1}).contiguous();
              out.hinv_diag = ColumnSquareSums(out.u);
              out.h = damped;
              out.damp = damp;
              return out;
            }
          }
          const double next = damp > 0 ? damp * 10 : 1e-3;
          if (next > options.max_damp) {
            return absl::FailedPreconditionError(absl::StrCat(
                "Hessian is not positive definite even with damping ", damp,
                " (bound ", options.max_damp, ")"));
          }
          damp = next;
        }
      });
}
}  // namespace tailor
