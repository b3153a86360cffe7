#ifndef TAILOR_UTIL_STATUS_MACROS_H_
#define TAILOR_UTIL_STATUS_MACROS_H_

#include "absl/status/status.h"
#include "absl/status/statusor.h"

// RETURN_IF_ERROR(expr): returns the status of `expr` from the enclosing
// function if it is not OK.
#define TAILOR_RETURN_IF_ERROR(expr)                 \
  do {                                               \
    ::absl::Status tailor_status_ = (expr);          \
    if (!tailor_status_.ok()) return tailor_status_; \
  } while (0)

#define TAILOR_STATUS_CONCAT_INNER_(a, b) a##b
#define TAILOR_STATUS_CONCAT_(a, b) TAILOR_STATUS_CONCAT_INNER_(a, b)

// ASSIGN_OR_RETURN(lhs, expr): evaluates `expr` (a StatusOr), returns its
// status if not OK, else moves its value into `lhs` (which may declare a
// variable, e.g. `auto x`).
#define TAILOR_ASSIGN_OR_RETURN(lhs, expr) \
  TAILOR_ASSIGN_OR_RETURN_IMPL_(           \
      TAILOR_STATUS_CONCAT_(tailor_statusor_, __LINE__), lhs, expr)
#define TAILOR_ASSIGN_OR_RETURN_IMPL_(statusor, lhs, expr) \
  auto statusor = (expr);                                  \
  if (!statusor.ok()) return std::move(statusor).status(); \
  lhs = std::move(statusor).value()

#endif  // TAILOR_UTIL_STATUS_MACROS_H_
