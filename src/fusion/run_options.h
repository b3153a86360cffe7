#ifndef TAILOR_FUSION_RUN_OPTIONS_H_
#define TAILOR_FUSION_RUN_OPTIONS_H_

// How a fusion job is run (RunOptions: progress, cancellation, journal,
// device scheduling, worker count, memory bound) and the interfaces it runs
// against: the progress sink and the per-tensor device scheduler. Torch-free,
// so that code observing or scheduling jobs (the job manager, the server)
// need not see LibTorch.

#include <atomic>
#include <cstdint>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "fusion/shard_plan.h"
#include "nlohmann/json.hpp"

namespace tailor {

// One progress report of a running job. Events of a job arrive one at a
// time (the job serialises them), from its worker threads or the thread
// running it. kTensorDone events come as tensors complete, which with
// several workers (RunOptions::workers) need not be plan order; `done`
// counts them.
struct ProgressEvent {
  enum class Kind {
    kPlanned,     // the plan is known: total tensors and bytes
    kTensorDone,  // one tensor fused, copied or resumed (from the journal)
    kWarning,     // something the report also lists, or a note about the
                  // journal (resumed from it, discarded it) that it does not
    kFinished,    // outputs published
  };
  Kind kind = Kind::kPlanned;
  std::string tensor;  // kTensorDone
  std::string action;  // kTensorDone: "fused" | "copied" | "resumed"
  // kTensorDone: where the tensor's work ran -- the lease's name() for a
  // tensor fused under a TensorDeviceScheduler, else the job's device
  // ("cpu", "cuda:0"). Copied and resumed tensors do no device work: "cpu".
  std::string device;
  // kTensorDone: seconds this tensor waited for its device lease (part of
  // the time since the previous event, not of the tensor's work).
  double wait_seconds = 0;
  // kTensorDone: seconds the tensor's computation held its device (fused
  // tensors only; 0 for copied and resumed ones).
  double busy_seconds = 0;
  int64_t done = 0;         // tensors finished so far
  int64_t total = 0;        // tensors in the plan
  uint64_t bytes_done = 0;  // base-checkpoint bytes finished so far
  uint64_t bytes_total = 0;
  double elapsed_seconds = 0;
  std::string message;   // kWarning
  nlohmann::json stats;  // kTensorDone: the tensor's report entry
};

// Receives progress; implementations must be fast (they run on the job's
// threads, under its lock) and must not call back into the job.
class ProgressSink {
 public:
  virtual ~ProgressSink() = default;
  virtual void OnEvent(const ProgressEvent& event) = 0;
  // The job's executor (fusion/job_executor.h) now has `in_flight` tensors
  // computing and `queued` not yet started; (0, 0) when the job's tensors
  // are over. Called often, under the executor's lock.
  virtual void OnExecutor(int in_flight, int queued) {
    (void)in_flight;
    (void)queued;
  }
};

// A device reserved for one tensor's work; the reservation ends when the
// lease is destroyed.
class DeviceLease {
 public:
  virtual ~DeviceLease() = default;
  // The device to compute on, as ResolveDevice (util/device.h) reads it:
  // "cpu" or "cuda:N".
  virtual std::string device() const = 0;
  // How progress events name it (several leases may share a device()).
  virtual std::string name() const { return device(); }
};

// Chooses a device for each fused tensor of a job. Called from the job's
// worker threads, concurrently when it has several (RunOptions::workers).
class TensorDeviceScheduler {
 public:
  virtual ~TensorDeviceScheduler() = default;
  // Blocks until a device has `estimated_bytes` of working memory free for
  // `tensor`. Errors end the job with that status (RESOURCE_EXHAUSTED: the
  // tensor can never fit; CANCELLED: the job was stopped while waiting).
  virtual absl::StatusOr<std::unique_ptr<DeviceLease>> Acquire(
      const std::string& tensor, int64_t estimated_bytes) = 0;
};

struct RunOptions {
  ProgressSink* progress = nullptr;  // optional, not owned
  // Checked between tensors; when it becomes true the job stops with
  // CANCELLED and publishes nothing. Optional, not owned.
  const std::atomic<bool>* cancel = nullptr;
  // Optional per-tensor journal (fusion/journal.h). When set, the job
  // records durably, right after computing each fused tensor, everything it
  // feeds its writers and report for it; a job started again with the same
  // directory (same spec and inputs) replays the recorded tensors instead of
  // recomputing them, so an interrupted job continues from its last
  // completed tensor, and its outputs are byte-identical to an uninterrupted
  // run's (the report differs only in timings and totals.resumed_tensors).
  // A journal of another spec or other inputs is emptied, never reused; a
  // damaged entry is recomputed. The job never deletes the directory: the
  // caller removes it when the job is over. It holds up to one extra copy
  // of the fused tensors (plus the patches) until then.
  std::string journal_dir;
  // Journal limits: at most journal_max_bytes in the journal (0: no limit),
  // and no entry written that would leave less than journal_reserve_bytes
  // free on its file system (the job store, on the same volume, needs
  // room to record the job's outcome). When an entry would break either,
  // or its write fails (ENOSPC), the job continues without the journal
  // (a warning event says so); it only costs recomputation after a restart.
  uint64_t journal_max_bytes = 0;
  uint64_t journal_reserve_bytes = 0;
  // Sharding one job across machines (fusion/shard_plan.h): a shard
  // computes its share of the fused tensors into a bundle under shard.dir
  // (its journal is ShardJournalDir there; journal_dir is not used) and
  // writes none of the spec's outputs; assemble reads every bundle and
  // publishes the outputs.
  ShardOptions shard;
  // Optional, not owned. When set, each fused tensor (not copied or resumed
  // ones) is computed on the device of a lease acquired for it with an
  // estimate of its peak working memory, and spec.device is not used; its
  // outputs come back to the CPU for writing, as without one.
  TensorDeviceScheduler* device_scheduler = nullptr;
  // Elements per chunk when a data-free merge streams a tensor (task
  // arithmetic, DARE, magnitude, TIES, SPIDER, stitching patches: see
  // FusionRun::Streams): its working memory is a few buffers of this many
  // elements per task, whatever the tensor's size. Tests shrink it; 0 computes
  // every tensor whole (a test hook: the same outputs).
  int64_t stream_chunk_elements = int64_t{1} << 18;
  // Tensors computed at once (fusion/job_executor.h): the job's worker
  // threads, each taking its device from device_scheduler when set. The
  // outputs and report rows are the same for any count (committed in plan
  // order); only timings differ. 1: one tensor at a time; also the count
  // used on a CUDA device without a device_scheduler (nothing budgets its
  // memory). The caller sizes the compute threads to match
  // (ConfigureComputeThreads in util/cpu_tuning.h: one BLAS thread per
  // worker by default).
  int workers = 1;
  // Bound on the host memory of the tensors computing and of the results
  // waiting for their turn to be written, bytes (the job's own estimates);
  // 0: room for one largest tensor per worker. The next tensor in plan
  // order always runs, whatever the bound.
  int64_t memory_budget = 0;
};

}  // namespace tailor

#endif  // TAILOR_FUSION_RUN_OPTIONS_H_
