#ifndef TAILOR_SERVER_SHUTDOWN_SIGNALS_H_
#define TAILOR_SERVER_SHUTDOWN_SIGNALS_H_

// SIGTERM and SIGINT as a sequence tailord reads at its own pace (the
// first starts the drain, a second cuts it short).
//
// Blocking the two signals in main() is not enough: libraries start threads
// before main (OpenBLAS's pool, from a static initializer) with nothing
// blocked, and a signal the kernel hands to one of those would take its
// default action and kill the process. So both ways lead to one pipe: a
// handler (for those threads) and a thread that takes the signals with
// sigwait (for all threads started after Install(), which block them).

#include "absl/status/status.h"

namespace tailor::server {

// Call once in main(), before any thread of its own starts: blocks SIGTERM
// and SIGINT in the calling thread (so in every thread started after it),
// installs the handler and starts the sigwait thread.
absl::Status InstallShutdownSignals();

// Blocks until the next SIGTERM or SIGINT arrives (or one that came since
// the last call); returns its number (0 if reading the pipe failed, which
// does not happen while the process lives). Thread-safe: each signal is
// returned once.
int NextShutdownSignal();

}  // namespace tailor::server

#endif  // TAILOR_SERVER_SHUTDOWN_SIGNALS_H_
