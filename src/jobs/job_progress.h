#ifndef TAILOR_JOBS_JOB_PROGRESS_H_
#define TAILOR_JOBS_JOB_PROGRESS_H_

// Engine progress (fusion/progress.h) as job events and metrics.

#include <cstdint>
#include <functional>
#include <string>

#include "absl/status/status.h"
#include "fusion/progress.h"
#include "jobs/job.h"
#include "jobs/job_metrics.h"

namespace tailor::jobs {

// Turns one run's ProgressEvents into JobEvents (kProgress with ETA, or
// kWarning, also logged) and hands each to `record`; kFinished is dropped
// (the run's outcome is the job's final state event). Tensor events also
// feed `metrics` (may be null): tensors by device and action, device wait,
// tensor duration (without the wait) and bytes read. Lives on the job's
// worker thread, one run; not thread-safe.
class JobProgressAdapter : public ProgressSink {
 public:
  // The metrics label of an engine device name (DevicePool's label).
  using DeviceLabel = std::function<std::string(const std::string& device)>;
  // Records an event of the job (a failure is logged, the run goes on).
  using Record = std::function<absl::Status(const JobEvent& event)>;

  JobProgressAdapter(std::string job_id, JobMetrics* metrics,
                     DeviceLabel device_label, Record record);

  void OnEvent(const ProgressEvent& e) override;

 private:
  const std::string id_;
  JobMetrics* const metrics_;
  const DeviceLabel device_label_;
  const Record record_;
  double last_elapsed_ = 0;
  uint64_t last_bytes_ = 0;
};

}  // namespace tailor::jobs

#endif  // TAILOR_JOBS_JOB_PROGRESS_H_
