#include "jobs/job_metrics.h"

namespace tailor::jobs {
namespace {

// Jobs take minutes to hours; queue waits from seconds to hours.
const std::vector<double> kJobBuckets = {1,    5,    15,    30,    60,
                                         120,  300,  600,   1200,  1800,
                                         3600, 7200, 14400, 28800, 86400};
const std::vector<double> kTensorBuckets = {0.001, 0.005, 0.01, 0.05, 0.1, 0.5,
                                            1,     5,     10,   30,   60,  300};

}  // namespace

JobMetrics::JobMetrics(metrics::Registry* r)
    : submitted(r->AddCounter("tailor_jobs_submitted_total",
                              "Fusion jobs accepted by CreateFusionJob.")),
      finished(r->AddCounter(
          "tailor_jobs_finished_total",
          "Fusion jobs that reached a final state, by outcome.", {"outcome"})),
      deleted(r->AddCounter("tailor_jobs_deleted_total",
                            "Finished fusion jobs deleted, by reason "
                            "(request: DeleteFusionJob; retention: the "
                            "--job-retention sweep).",
                            {"reason"})),
      jobs(r->AddGauge("tailor_jobs", "Fusion jobs known, by state.",
                       {"state"})),
      job_duration(r->AddHistogram(
          "tailor_job_duration_seconds",
          "Run time of finished fusion jobs (start to end of the last run).",
          {"outcome"}, kJobBuckets)),
      queue_wait(r->AddHistogram(
          "tailor_job_queue_wait_seconds",
          "Time from job creation to the start of its run.", {}, kJobBuckets)),
      tensors(r->AddCounter("tailor_tensors_processed_total",
                            "Tensors fused, copied or resumed (from a "
                            "journal), by device and action.",
                            {"device", "action"})),
      tensor_duration(r->AddHistogram(
          "tailor_tensor_duration_seconds",
          "Time to fuse or copy one tensor (without waiting for "
          "device memory), by device.",
          {"device"}, kTensorBuckets)),
      device_memory(r->AddGauge(
          "tailor_device_memory_in_use_bytes",
          "Working memory reserved now by running tensors on each device of "
          "the pool (estimates, within its budget), by device: cpu or the "
          "GPU UUID.",
          {"device"})),
      device_budget(r->AddGauge("tailor_device_memory_budget_bytes",
                                "Memory budget of each device of the pool.",
                                {"device"})),
      device_wait(r->AddCounter(
          "tailor_device_wait_seconds_total",
          "Time fused tensors waited for device memory within the budget, "
          "by the device they then ran on.",
          {"device"})),
      device_busy(r->AddCounter(
          "tailor_device_busy_seconds_total",
          "Time fused tensors spent computing on each device (summed over "
          "the tensors of a job running at once), by device.",
          {"device"})),
      executor_items(r->AddGauge(
          "tailor_executor_items",
          "Tensors of running jobs computing now (in_flight) or not yet "
          "started (queued), by state.",
          {"state"})),
      process_memory(r->AddGauge("tailor_process_resident_memory_bytes",
                                 "Resident set size of the server process.")),
      read_bytes(r->AddCounter(
          "tailor_io_read_bytes_total",
          "Base-checkpoint bytes read by fusion jobs (tensors processed).")),
      written_bytes(r->AddCounter(
          "tailor_io_written_bytes_total",
          "Bytes of outputs published by succeeded fusion jobs.")),
      validation_failures(r->AddCounter(
          "tailor_validation_failures_total",
          "CreateFusionJob requests refused, by reason (status code).",
          {"reason"})),
      last_success(
          r->AddGauge("tailor_last_success_timestamp_seconds",
                      "Unix time at which the last fusion job succeeded.")) {
  // Label-less counters exist from the start, at zero.
  for (metrics::Family* f : {submitted, read_bytes, written_bytes}) {
    f->Increment({}, 0);
  }
  for (const char* state : {"in_flight", "queued"}) {
    executor_items->Increment({state}, 0);
  }
  // Every known label value exists from the start, at zero, so that a rate
  // or an alert on a rare outcome has a series before its first event
  // (tailor_jobs{state} is set at every scrape).
  for (const char* outcome : {"succeeded", "failed", "cancelled"}) {
    finished->Init({outcome});
    job_duration->Init({outcome});
  }
  // The codes CreateFusionJob refuses a job with (JobManager::CreateJob).
  for (const char* reason :
       {"invalid_argument", "failed_precondition", "already_exists",
        "resource_exhausted", "permission_denied"}) {
    validation_failures->Init({reason});
  }
}

}  // namespace tailor::jobs
