#ifndef TAILOR_FUSION_CALIBRATION_H_
#define TAILOR_FUSION_CALIBRATION_H_

#include <ATen/core/Tensor.h>

#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <tuple>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "fusion/layer_options.h"
#include "fusion/tailor_kernel.h"
#include "io/calibration_file.h"  // CalibrationFile, kHessianFormat

namespace tailor {

// The prepared Hessians of one job (src/DESIGN.md §2.2): one PrepareHessian
// per (task, Hessian key, device), shared by every tensor aliased to that
// key (q/k/v, gate/up) and freed after its last user in plan order.
//
// Expect() declares, before any Acquire(), the plan positions that will use
// a key; Acquire() prepares on first use; Finished(i) says position i is
// done (computed, resumed from a journal or skipped) and frees every entry
// none of whose expected users is still to come. Positions may finish in
// any order (concurrent workers, issue #12). An entry whose preparation
// failed (not positive definite) caches that status, so every alias reports
// the same fallback.
//
// Thread-safe. Concurrent Acquire()s of one (task, key, device) prepare it
// once: the later ones wait for the first's result; preparations of
// different keys run concurrently (the lock is not held while preparing).
class PreparedHessianCache {
 public:
  using Entry = std::shared_ptr<const absl::StatusOr<PreparedHessian>>;
  // Loads the raw Hessian (CalibrationFile::Load).
  using Loader = std::function<absl::StatusOr<at::Tensor>()>;

  void Expect(int task, const std::string& key, int64_t position);

  // The prepared Hessian of (task, key) on `device`. Errors are the
  // loader's (bad calibration file): those fail the tensor and are not
  // cached.
  absl::StatusOr<Entry> Acquire(int task, const std::string& key,
                                const at::Device& device, const Loader& load,
                                const TailorOptions& options);

  void Finished(int64_t position);

  // Bytes held by the live prepared Hessians.
  int64_t LiveBytes() const;
  // Bytes of the live prepared Hessians of (task, key) (on any device).
  int64_t LiveBytesOf(int task, const std::string& key) const;
  // Whether (task, key) is prepared and live (on any device).
  bool IsLive(int task, const std::string& key) const;
  // Number of PrepareHessian calls so far (for tests).
  int64_t preparations() const;

 private:
  using Key = std::tuple<int, std::string>;
  using Id = std::tuple<int, std::string, std::string>;  // + device
  mutable absl::Mutex mu_;  // guards the members below
  // The positions still to finish that use each (task, key).
  std::map<Key, std::set<int64_t>> users_ ABSL_GUARDED_BY(mu_);
  std::map<Id, Entry> live_ ABSL_GUARDED_BY(mu_);
  // Ids being prepared now (by an Acquire that dropped the lock).
  std::set<Id> preparing_ ABSL_GUARDED_BY(mu_);
  int64_t preparations_ ABSL_GUARDED_BY(mu_) = 0;
};

}  // namespace tailor

#endif  // TAILOR_FUSION_CALIBRATION_H_
