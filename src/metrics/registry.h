#ifndef TAILOR_METRICS_REGISTRY_H_
#define TAILOR_METRICS_REGISTRY_H_

// A small Prometheus metrics registry: counters, gauges and histograms with
// labels, rendered in the text exposition format 0.0.4
// (https://prometheus.io/docs/instrumenting/exposition_formats/).
//
// Thread-safe: every method may be called from any thread.

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"

namespace tailor::metrics {

enum class MetricType { kCounter, kGauge, kHistogram };

// One metric family: a name, help, type, label names, and one series per
// distinct tuple of label values.
class Family {
 public:
  using Labels = std::vector<std::string>;

  // Counter: adds `by` (>= 0; negative is ignored). Gauge: adds `by`.
  // Label values must match the family's label names in number; a call with
  // the wrong number is ignored (it is a programming error).
  void Increment(const Labels& values, double by = 1);
  // Gauge: sets the value. Counter: mirrors a monotonic total kept
  // elsewhere (e.g. the kernel's CPU time of the process); never lowers it.
  void Set(const Labels& values, double value);
  // Histogram only: records one observation.
  void Observe(const Labels& values, double value);
  // Creates the series of `values` at zero if it does not exist (any type),
  // so that it is exported before its first event: a rate or an alert on a
  // rare outcome then has a series from the first scrape.
  void Init(const Labels& values);
  // Drops every series (for gauges recomputed at each scrape).
  void Clear();

  // Appends this family in text format 0.0.4.
  void Render(std::string* out) const;

  const std::string& name() const { return name_; }

 private:
  friend class Registry;
  struct Series {
    double value = 0;              // counter, gauge
    std::vector<uint64_t> counts;  // histogram: per bucket, not cumulative
    uint64_t count = 0;
    double sum = 0;
  };
  Family(std::string name, std::string help, MetricType type,
         std::vector<std::string> label_names, std::vector<double> buckets);
  Series* Find(const Labels& values) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  const std::string name_, help_;
  const MetricType type_;
  const std::vector<std::string> label_names_;
  const std::vector<double> buckets_;  // histogram upper bounds, ascending
  mutable absl::Mutex mu_;             // guards series_
  std::map<Labels, Series> series_ ABSL_GUARDED_BY(mu_);
};

class Registry {
 public:
  // Registers a family. REQUIRES (programming errors, checked and fatal): a
  // valid metric name ([a-zA-Z_:][a-zA-Z0-9_:]*) not registered before; valid
  // label names ([a-zA-Z_][a-zA-Z0-9_]*, not "__"-prefixed, no "le" on
  // histograms); histogram buckets finite and strictly ascending (+Inf is
  // implicit). The family lives as long as the registry.
  Family* AddCounter(const std::string& name, const std::string& help,
                     std::vector<std::string> label_names = {});
  Family* AddGauge(const std::string& name, const std::string& help,
                   std::vector<std::string> label_names = {});
  Family* AddHistogram(const std::string& name, const std::string& help,
                       std::vector<std::string> label_names,
                       std::vector<double> buckets);

  // `collect` runs at the start of every Render(), e.g. to set gauges that
  // mirror another component's state. It must not call Render(). Returns an
  // id for RemoveCollector().
  int64_t AddCollector(std::function<void()> collect);
  // After this returns, the collector is not running and will not run.
  void RemoveCollector(int64_t id);

  // Every family, in registration order, in text format 0.0.4.
  std::string Render() const;

 private:
  Family* Add(const std::string& name, const std::string& help, MetricType type,
              std::vector<std::string> label_names,
              std::vector<double> buckets);

  mutable absl::Mutex mu_;  // guards families_ and collectors_
  std::vector<std::unique_ptr<Family>> families_ ABSL_GUARDED_BY(mu_);
  std::map<int64_t, std::function<void()>> collectors_ ABSL_GUARDED_BY(mu_);
  int64_t next_collector_ ABSL_GUARDED_BY(mu_) = 1;
  // Held while collectors run, so that RemoveCollector can wait for them.
  mutable absl::Mutex collect_mu_ ABSL_ACQUIRED_BEFORE(mu_);
};

// Text-format helpers (exposed for tests).
// A sample value: shortest round-trip decimal, "+Inf", "-Inf" or "NaN".
std::string FormatValue(double value);
// A label value: backslash, double quote and newline escaped.
std::string EscapeLabelValue(absl::string_view value);
// HELP text: backslash and newline escaped.
std::string EscapeHelp(absl::string_view help);

}  // namespace tailor::metrics

#endif  // TAILOR_METRICS_REGISTRY_H_
