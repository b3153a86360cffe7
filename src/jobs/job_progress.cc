#include "jobs/job_progress.h"

#include <algorithm>
#include <utility>

#include "util/log.h"

namespace tailor::jobs {

JobProgressAdapter::JobProgressAdapter(std::string job_id, JobMetrics* metrics,
                                       DeviceLabel device_label, Record record)
    : id_(std::move(job_id)),
      metrics_(metrics),
      device_label_(std::move(device_label)),
      record_(std::move(record)) {}

JobProgressAdapter::~JobProgressAdapter() { OnExecutor(0, 0); }

void JobProgressAdapter::OnExecutor(int in_flight, int queued) {
  if (metrics_ == nullptr) return;
  metrics_->executor_items->Increment({"in_flight"}, in_flight - in_flight_);
  metrics_->executor_items->Increment({"queued"}, queued - queued_);
  in_flight_ = in_flight;
  queued_ = queued;
}

void JobProgressAdapter::OnEvent(const ProgressEvent& e) {
  JobEvent event;
  if (e.kind == ProgressEvent::Kind::kFinished) return;
  if (e.kind == ProgressEvent::Kind::kWarning) {
    event.kind = JobEvent::Kind::kWarning;
    event.warning = e.message;
    Log(LogLevel::kWarning, "fusionJobs/" + id_, e.message);
  } else {
    event.kind = JobEvent::Kind::kProgress;
    JobProgress& p = event.progress;
    p.tensors_done = e.done;
    p.tensors_total = e.total;
    p.bytes_done = e.bytes_done;
    p.bytes_total = e.bytes_total;
    p.elapsed_seconds = e.elapsed_seconds;
    if (e.bytes_done > 0 && e.bytes_total >= e.bytes_done) {
      p.eta_seconds = e.elapsed_seconds *
                      static_cast<double>(e.bytes_total - e.bytes_done) /
                      static_cast<double>(e.bytes_done);
    }
    p.tensor = e.tensor;
    p.action = e.action;
    if (e.kind == ProgressEvent::Kind::kTensorDone && metrics_ != nullptr) {
      JobMetrics& m = *metrics_;
      const std::string device = device_label_(e.device);
      m.tensors->Increment({device, e.action});
      if (e.wait_seconds > 0) {
        m.device_wait->Increment({device}, e.wait_seconds);
      }
      // The tensor's own time: waiting for a device does not count. A
      // fused tensor's is the time it held its device (tensors of one job
      // overlap with several workers); a copied or resumed one's the time
      // since the previous event.
      m.tensor_duration->Observe(
          {device}, e.busy_seconds > 0
                        ? e.busy_seconds
                        : std::max(0.0, e.elapsed_seconds - last_elapsed_ -
                                            e.wait_seconds));
      if (e.busy_seconds > 0) {
        m.device_busy->Increment({device}, e.busy_seconds);
      }
      m.read_bytes->Increment({},
                              static_cast<double>(e.bytes_done - last_bytes_));
    }
    last_elapsed_ = e.elapsed_seconds;
    last_bytes_ = e.bytes_done;
  }
  absl::Status s = record_(event);
  if (!s.ok()) Log(LogLevel::kError, "fusionJobs/" + id_, s.ToString());
}

}  // namespace tailor::jobs
