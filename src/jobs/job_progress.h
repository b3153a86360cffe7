#ifndef TAILOR_JOBS_JOB_PROGRESS_H_
#define TAILOR_JOBS_JOB_PROGRESS_H_

// Engine progress (fusion/run_options.h) as job events and metrics.

#include <cstdint>
#include <functional>
#include <string>

#include "absl/status/status.h"
#include "fusion/run_options.h"
#include "jobs/job.h"
#include "jobs/job_metrics.h"

namespace tailor::jobs {

// Turns one run's ProgressEvents into JobEvents (kProgress with ETA, or
// kWarning, also logged) and hands each to `record`; kFinished is dropped
// (the run's outcome is the job's final state event). Tensor events also
// feed `metrics` (may be null): tensors by device and action, device wait,
// tensor duration (without the wait, or the time it held its device), device
// busy seconds and bytes read; OnExecutor feeds the executor gauges (this
// job's share of them, taken back by the destructor). One run; calls come
// from the job's threads one at a time (the engine serialises its events
// and its executor reports), so it needs no lock of its own.
class JobProgressAdapter : public ProgressSink {
 public:
  // The metrics label of an engine device name (DevicePool's label).
  using DeviceLabel = std::function<std::string(const std::string& device)>;
  // Records an event of the job (a failure is logged, the run goes on).
  using Record = std::function<absl::Status(const JobEvent& event)>;

  JobProgressAdapter(std::string job_id, JobMetrics* metrics,
                     DeviceLabel device_label, Record record);

  ~JobProgressAdapter() override;

  void OnEvent(const ProgressEvent& e) override;
  // The executor's in-flight and queued items of this run.
  void OnExecutor(int in_flight, int queued) override;

 private:
  const std::string id_;
  JobMetrics* const metrics_;
  const DeviceLabel device_label_;
  const Record record_;
  double last_elapsed_ = 0;
  uint64_t last_bytes_ = 0;
  int in_flight_ = 0, queued_ = 0;  // this run's last executor gauges
};

}  // namespace tailor::jobs

#endif  // TAILOR_JOBS_JOB_PROGRESS_H_
