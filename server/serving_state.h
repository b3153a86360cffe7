#ifndef TAILOR_SERVER_SERVING_STATE_H_
#define TAILOR_SERVER_SERVING_STATE_H_

// Whether tailord serves: what grpc.health.v1 (the server and
// tailor.v1.FusionService) and the metrics port's /readyz report, so that a
// readiness probe takes the pod out of its Services when it cannot take
// work. NOT_SERVING while either
//   * it drains (BeginDrain: SIGTERM/SIGINT), for good; or
//   * the data directory (the job store, the journals) cannot be written:
//     a probe creates, writes, fsyncs and removes a small file in it every
//     probe interval. A volume remounted read-only, full, gone (unmounted,
//     removed, renamed) or no longer writable by tailord's uid fails it;
//     SERVING again from the first probe that passes.
// Torch-free and gRPC-free: the state reaches gRPC through `on_change`.

#include <functional>
#include <string>
#include <thread>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"

namespace tailor::server {

// Creates `dir`/.tailord-probe-<pid>, writes a byte, fsyncs and removes it.
// OK, or the error naming the probe file and the call that failed.
absl::Status ProbeWritableDirectory(const std::string& dir);

class ServingState {
 public:
  struct Options {
    std::string data_dir;
    absl::Duration probe_interval = absl::Seconds(5);
    // Called with every change of serving(), the first at Start(); never
    // concurrently with itself (it runs under the state's lock: it must not
    // call back into this object).
    std::function<void(bool serving)> on_change;
  };

  explicit ServingState(Options options);
  // Stops the probe thread.
  ~ServingState();
  ServingState(const ServingState&) = delete;
  ServingState& operator=(const ServingState&) = delete;

  // Probes once, reports the state (on_change) and starts the probe thread.
  void Start();
  // NOT_SERVING from now on; stops probing.
  void BeginDrain();
  bool serving() const;
  // Why not serving ("" when serving): "draining" or the probe's error.
  std::string reason() const;

 private:
  void ProbeLoop();
  bool StopProbing() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    return stop_ || draining_;
  }
  bool ServingLocked() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    return started_ && !draining_ && data_dir_error_.empty();
  }
  // Records the probe's outcome, logs and reports a change.
  void Record(const absl::Status& probe) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void Publish() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  const Options options_;
  // Guards the state below; held while on_change runs.
  mutable absl::Mutex mu_;
  bool started_ ABSL_GUARDED_BY(mu_) = false;
  bool draining_ ABSL_GUARDED_BY(mu_) = false;
  bool stop_ ABSL_GUARDED_BY(mu_) = false;
  // The last probe's error, "" after a probe that passed.
  std::string data_dir_error_ ABSL_GUARDED_BY(mu_);
  // What on_change last reported (once started_).
  bool published_ ABSL_GUARDED_BY(mu_) = false;
  // Runs ProbeLoop from Start() on.
  std::thread thread_;
};

}  // namespace tailor::server

#endif  // TAILOR_SERVER_SERVING_STATE_H_
