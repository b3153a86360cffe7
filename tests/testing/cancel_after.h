#ifndef TAILOR_TESTS_TESTING_CANCEL_AFTER_H_
#define TAILOR_TESTS_TESTING_CANCEL_AFTER_H_

#include <atomic>
#include <string>

#include "fusion/run_options.h"

namespace tailor::testing {

// A fusion job's progress sink that cancels the run (RunOptions::cancel =
// &cancel) once `after` tensors were fused (-1: never), as a killed run
// would stop, leaving its journal. Counts resumed tensors and keeps the
// warnings, one a line. Events come one at a time (FusionRun emits them
// under its lock).
class CancelAfter : public ProgressSink {
 public:
  explicit CancelAfter(int after) : after_(after) {}
  void OnEvent(const ProgressEvent& e) override {
    if (e.kind == ProgressEvent::Kind::kTensorDone && e.action == "fused" &&
        ++fused_ == after_) {
      cancel = true;
    }
    if (e.kind == ProgressEvent::Kind::kTensorDone && e.action == "resumed") {
      ++resumed;
    }
    if (e.kind == ProgressEvent::Kind::kWarning) warnings += e.message + "\n";
  }
  std::atomic<bool> cancel{false};
  int resumed = 0;
  std::string warnings;

 private:
  const int after_;
  int fused_ = 0;
};

}  // namespace tailor::testing

#endif  // TAILOR_TESTS_TESTING_CANCEL_AFTER_H_
