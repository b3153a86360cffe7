#ifndef TAILOR_CLIENT_PROGRESS_BAR_H_
#define TAILOR_CLIENT_PROGRESS_BAR_H_

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

}  // namespace tailor::cli

#endif  // TAILOR_CLIENT_PROGRESS_BAR_H_
