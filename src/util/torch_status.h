#ifndef TAILOR_UTIL_TORCH_STATUS_H_
#define TAILOR_UTIL_TORCH_STATUS_H_

#include <exception>
#include <type_traits>
#include <utility>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "c10/util/Exception.h"

namespace tailor {

// The one boundary where LibTorch exceptions become statuses: runs `fn` and
// turns c10::Error (and any other std::exception) into INTERNAL naming
// `context`.
//
// Where it belongs: around the LibTorch calls of a public entry point of a
// torch-using library (a TensorSource's Read, a kernel's Fuse, a model's
// forward, a LoRA merge), as close to the ATen calls as keeps the context
// meaningful; inputs are validated before, so what it catches is a LibTorch
// failure (allocation, an unsupported op), not bad user input. Code already
// inside a CatchTorch, and the torch-free libraries (tailor_base,
// tailor_spec, tailor_jobs, ...), do not use it; nothing above the engine
// (server/, client/) sees a c10::Error. See src/DESIGN.md §5. `fn` returns
// void, absl::Status, a value T, or absl::StatusOr<T>; the result is
// absl::Status or absl::StatusOr<T> accordingly.
template <typename Fn>
auto CatchTorch(absl::string_view context, Fn&& fn) {
  using R = std::invoke_result_t<Fn>;
  using Out = std::conditional_t<
      std::is_void_v<R> || std::is_same_v<R, absl::Status>, absl::Status,
      std::conditional_t<std::is_convertible_v<absl::Status, R>, R,
                         absl::StatusOr<R>>>;
  auto error = [&](const char* what) -> Out {
    // c10 messages carry a C++ backtrace after the first line; keep line one.
    absl::string_view text(what);
    text = text.substr(0, text.find('\n'));
    return absl::InternalError(absl::StrCat(context, ": ", text));
  };
  try {
    if constexpr (std::is_void_v<R>) {
      std::forward<Fn>(fn)();
      return Out(absl::OkStatus());
    } else {
      return Out(std::forward<Fn>(fn)());
    }
  } catch (const c10::Error& e) {
    return error(e.what_without_backtrace());
  } catch (const std::exception& e) {
    return error(e.what());
  }
}

}  // namespace tailor

#endif  // TAILOR_UTIL_TORCH_STATUS_H_
