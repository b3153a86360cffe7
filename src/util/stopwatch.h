#ifndef TAILOR_UTIL_STOPWATCH_H_
#define TAILOR_UTIL_STOPWATCH_H_

// The one way the engine times a step: a monotonic clock, read as seconds.

#include <chrono>

namespace tailor {

// Started at construction (or Restart()); Seconds() is the time since, from
// std::chrono::steady_clock. Thread-compatible (const reads are safe).
class Stopwatch {
 public:
  Stopwatch() : start_(std::chrono::steady_clock::now()) {}

  void Restart() { start_ = std::chrono::steady_clock::now(); }

  double Seconds() const {
    return std::chrono::duration<double>(std::chrono::steady_clock::now() -
                                         start_)
        .count();
  }

 private:
  std::chrono::steady_clock::time_point start_;
};

}  // namespace tailor

#endif  // TAILOR_UTIL_STOPWATCH_H_
