#ifndef TAILOR_JOBS_JOB_METRICS_H_
#define TAILOR_JOBS_JOB_METRICS_H_

#include "metrics/registry.h"

namespace tailor::jobs {

// The job service's metric families (src/DESIGN.md §4.5: unit-suffixed names,
// no job ids or URIs as label values). Registered on construction; the
// pointers live as long as the registry.
struct JobMetrics {
  explicit JobMetrics(metrics::Registry* registry);

  metrics::Family* submitted;            // counter
  metrics::Family* finished;             // counter {outcome}
  metrics::Family* deleted;              // counter {reason}
  metrics::Family* jobs;                 // gauge {state}
  metrics::Family* job_duration;         // histogram {outcome}
  metrics::Family* queue_wait;           // histogram
  metrics::Family* tensors;              // counter {device, action}
  metrics::Family* tensor_duration;      // histogram {device}
  metrics::Family* device_memory;        // gauge {device}
  metrics::Family* device_budget;        // gauge {device}
  metrics::Family* device_wait;          // counter {device}
  metrics::Family* device_busy;          // counter {device}
  metrics::Family* executor_items;       // gauge {state}
  metrics::Family* process_memory;       // gauge
  metrics::Family* read_bytes;           // counter
  metrics::Family* written_bytes;        // counter
  metrics::Family* validation_failures;  // counter {reason}
  metrics::Family* last_success;         // gauge
};

}  // namespace tailor::jobs

#endif  // TAILOR_JOBS_JOB_METRICS_H_
