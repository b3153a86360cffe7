#ifndef TAILOR_CLIENT_PROGRESS_BAR_H_
#define TAILOR_CLIENT_PROGRESS_BAR_H_

#include <string>

#include "fusion/run_options.h"

namespace tailor::cli {

// A one-line progress bar with ETA on stderr when stderr is a terminal (and
// not `quiet`); otherwise it prints nothing but warnings. Used by
// `fuse --local` (engine events) and `watch`/`submit --wait` (server
// events, converted).
class TerminalProgress : public ProgressSink {
 public:
  explicit TerminalProgress(bool quiet);
  void OnEvent(const ProgressEvent& e) override;
  // Clears the bar's line, if one is shown.
  void Clear();

 private:
  const bool tty_;
};

// The bar's text for a progress event: "[###---]  42% of bytes, 3/10
// tensors  ETA 0:12  <tensor>" (the percentage is of the base checkpoint's
// bytes, the count of tensors).
std::string ProgressBarText(const ProgressEvent& e);

}  // namespace tailor::cli

#endif  // TAILOR_CLIENT_PROGRESS_BAR_H_
