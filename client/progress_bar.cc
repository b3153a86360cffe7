#include "progress_bar.h"

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
  std::cerr << absl::StrFormat("\r\033[K[%s] %3.0f%% %d/%d tensors  ETA %s  %s",
                               bar, frac * 100, e.done, e.total, eta,
                               e.tensor.substr(0, 40))
            << std::flush;
}

}  // namespace tailor::cli
