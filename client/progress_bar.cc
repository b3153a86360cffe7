#include "client/progress_bar.h"

#include <unistd.h>

#include <iostream>
#include <string>

#include "absl/strings/str_format.h"

namespace tailor::cli {

TerminalProgress::TerminalProgress(bool quiet) : tty_(!quiet && ::isatty(2)) {}

void TerminalProgress::Clear() {
  if (tty_) std::cerr << "\r\033[K" << std::flush;
}

void TerminalProgress::OnEvent(const ProgressEvent& e) {
  if (e.kind == ProgressEvent::Kind::kWarning) {
    Clear();
    std::cerr << "warning: " << e.message << "\n";
    return;
  }
  if (!tty_) return;
  if (e.kind == ProgressEvent::Kind::kFinished) {
    Clear();
    return;
  }
  std::cerr << "\r\033[K" << ProgressBarText(e) << std::flush;
}

std::string ProgressBarText(const ProgressEvent& e) {
  const double frac =
      e.bytes_total ? static_cast<double>(e.bytes_done) / e.bytes_total : 0;
  const int width = 30;
  const int filled = static_cast<int>(frac * width);
  std::string bar(filled, '#');
  bar.append(width - filled, '-');
  std::string eta = "--:--";
  if (frac > 0.01) {
    const int secs = static_cast<int>(e.elapsed_seconds * (1 - frac) / frac);
    eta = absl::StrFormat("%d:%02d", secs / 60, secs % 60);
  }
  // The percentage is of the base checkpoint's bytes, which is not the
  // share of tensors done (tensors differ in size): both are labelled.
  return absl::StrFormat("[%s] %3.0f%% of bytes, %d/%d tensors  ETA %s  %s",
                         bar, frac * 100, e.done, e.total, eta,
                         e.tensor.substr(0, 40));
}

}  // namespace tailor::cli
