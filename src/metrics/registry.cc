#include "metrics/registry.h"

#include <cmath>
#include <cstdio>
#include <cstdlib>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace tailor::metrics {
namespace {

bool ValidName(absl::string_view name, bool allow_colon) {
  if (name.empty()) return false;
  for (size_t i = 0; i < name.size(); ++i) {
    const char c = name[i];
    const bool alpha = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
                       c == '_' || (allow_colon && c == ':');
    if (!alpha && !(i > 0 && c >= '0' && c <= '9')) return false;
  }
  return true;
}

[[noreturn]] void Fatal(const std::string& message) {
  std::fprintf(stderr, "metrics registry: %s\n", message.c_str());
  std::abort();
}

void AppendLabels(const std::vector<std::string>& names,
                  const std::vector<std::string>& values,
                  absl::string_view extra_name, absl::string_view extra_value,
                  std::string* out) {
  if (names.empty() && extra_name.empty()) return;
  out->push_back('{');
  bool first = true;
  for (size_t i = 0; i < names.size(); ++i) {
    absl::StrAppend(out, first ? "" : ",", names[i], "=\"",
                    EscapeLabelValue(values[i]), "\"");
    first = false;
  }
  if (!extra_name.empty()) {
    absl::StrAppend(out, first ? "" : ",", extra_name, "=\"", extra_value,
                    "\"");
  }
  out->push_back('}');
}

}  // namespace

std::string FormatValue(double value) {
  if (std::isnan(value)) return "NaN";
  if (std::isinf(value)) return value > 0 ? "+Inf" : "-Inf";
  for (int precision = 15; precision <= 17; ++precision) {
    std::string s = absl::StrFormat("%.*g", precision, value);
    if (std::strtod(s.c_str(), nullptr) == value) return s;
  }
  return absl::StrFormat("%.17g", value);
}

namespace {

// The text format's escapes: backslash and newline, and the double quote
// where `quotes` (label values).
std::string Escape(absl::string_view text, bool quotes) {
  std::string out;
  for (char c : text) {
    if (c == '\\') {
      out += "\\\\";
    } else if (c == '"' && quotes) {
      out += "\\\"";
    } else if (c == '\n') {
      out += "\\n";
    } else {
      out.push_back(c);
    }
  }
  return out;
}

}  // namespace

std::string EscapeLabelValue(absl::string_view value) {
  return Escape(value, /*quotes=*/true);
}

std::string EscapeHelp(absl::string_view help) {
  return Escape(help, /*quotes=*/false);
}

Family::Family(std::string name, std::string help, MetricType type,
               std::vector<std::string> label_names,
               std::vector<double> buckets)
    : name_(std::move(name)),
      help_(std::move(help)),
      type_(type),
      label_names_(std::move(label_names)),
      buckets_(std::move(buckets)) {}

Family::Series* Family::Find(const Labels& values) {
  if (values.size() != label_names_.size()) return nullptr;
  Series& s = series_[values];
  if (type_ == MetricType::kHistogram && s.counts.empty()) {
    s.counts.assign(buckets_.size(), 0);
  }
  return &s;
}

void Family::Increment(const Labels& values, double by) {
  if (type_ == MetricType::kHistogram) return;
  if (type_ == MetricType::kCounter && !(by >= 0)) return;
  absl::MutexLock lock(&mu_);
  if (Series* s = Find(values)) s->value += by;
}

void Family::Init(const Labels& values) {
  absl::MutexLock lock(&mu_);
  Find(values);
}

void Family::Set(const Labels& values, double value) {
  if (type_ == MetricType::kHistogram) return;
  absl::MutexLock lock(&mu_);
  Series* s = Find(values);
  if (s == nullptr) return;
  if (type_ == MetricType::kCounter && !(value >= s->value)) return;
  s->value = value;
}

void Family::Observe(const Labels& values, double value) {
  if (type_ != MetricType::kHistogram || std::isnan(value)) return;
  absl::MutexLock lock(&mu_);
  Series* s = Find(values);
  if (s == nullptr) return;
  for (size_t i = 0; i < buckets_.size(); ++i) {
    if (value <= buckets_[i]) {
      ++s->counts[i];
      break;
    }
  }
  ++s->count;
  s->sum += value;
}

void Family::Clear() {
  absl::MutexLock lock(&mu_);
  series_.clear();
}

void Family::Render(std::string* out) const {
  static constexpr const char* kTypeNames[] = {"counter", "gauge", "histogram"};
  absl::StrAppend(out, "# HELP ", name_, " ", EscapeHelp(help_), "\n",
                  "# TYPE ", name_, " ", kTypeNames[static_cast<int>(type_)],
                  "\n");
  absl::MutexLock lock(&mu_);
  for (const auto& [values, s] : series_) {
    if (type_ != MetricType::kHistogram) {
      out->append(name_);
      AppendLabels(label_names_, values, "", "", out);
      absl::StrAppend(out, " ", FormatValue(s.value), "\n");
      continue;
    }
    uint64_t cumulative = 0;
    for (size_t i = 0; i <= buckets_.size(); ++i) {
      cumulative += i < buckets_.size() ? s.counts[i] : 0;
      const uint64_t n = i < buckets_.size() ? cumulative : s.count;
      absl::StrAppend(out, name_, "_bucket");
      AppendLabels(label_names_, values, "le",
                   i < buckets_.size() ? FormatValue(buckets_[i]) : "+Inf",
                   out);
      absl::StrAppend(out, " ", n, "\n");
    }
    absl::StrAppend(out, name_, "_sum");
    AppendLabels(label_names_, values, "", "", out);
    absl::StrAppend(out, " ", FormatValue(s.sum), "\n", name_, "_count");
    AppendLabels(label_names_, values, "", "", out);
    absl::StrAppend(out, " ", s.count, "\n");
  }
}

Family* Registry::Add(const std::string& name, const std::string& help,
                      MetricType type, std::vector<std::string> label_names,
                      std::vector<double> buckets) {
  if (!ValidName(name, /*allow_colon=*/true)) {
    Fatal(absl::StrCat("invalid metric name '", name, "'"));
  }
  for (const std::string& l : label_names) {
    if (!ValidName(l, false) || l.rfind("__", 0) == 0 ||
        (type == MetricType::kHistogram && l == "le")) {
      Fatal(absl::StrCat(name, ": invalid label name '", l, "'"));
    }
  }
  for (size_t i = 0; i < buckets.size(); ++i) {
    if (!std::isfinite(buckets[i]) || (i > 0 && buckets[i] <= buckets[i - 1])) {
      Fatal(absl::StrCat(name, ": buckets must be finite and ascending"));
    }
  }
  absl::MutexLock lock(&mu_);
  for (const auto& f : families_) {
    if (f->name() == name) Fatal(absl::StrCat(name, " registered twice"));
  }
  families_.push_back(std::unique_ptr<Family>(new Family(
      name, help, type, std::move(label_names), std::move(buckets))));
  return families_.back().get();
}

Family* Registry::AddCounter(const std::string& name, const std::string& help,
                             std::vector<std::string> label_names) {
  return Add(name, help, MetricType::kCounter, std::move(label_names), {});
}

Family* Registry::AddGauge(const std::string& name, const std::string& help,
                           std::vector<std::string> label_names) {
  return Add(name, help, MetricType::kGauge, std::move(label_names), {});
}

Family* Registry::AddHistogram(const std::string& name, const std::string& help,
                               std::vector<std::string> label_names,
                               std::vector<double> buckets) {
  return Add(name, help, MetricType::kHistogram, std::move(label_names),
             std::move(buckets));
}

int64_t Registry::AddCollector(std::function<void()> collect) {
  absl::MutexLock lock(&mu_);
  collectors_[next_collector_] = std::move(collect);
  return next_collector_++;
}

void Registry::RemoveCollector(int64_t id) {
  absl::MutexLock collect_lock(&collect_mu_);
  absl::MutexLock lock(&mu_);
  collectors_.erase(id);
}

std::string Registry::Render() const {
  std::vector<const Family*> families;
  {
    absl::MutexLock collect_lock(&collect_mu_);
    std::vector<std::function<void()>> collectors;
    {
      absl::MutexLock lock(&mu_);
      for (const auto& [id, c] : collectors_) collectors.push_back(c);
    }
    for (const auto& c : collectors) c();
  }
  {
    absl::MutexLock lock(&mu_);
    for (const auto& f : families_) families.push_back(f.get());
  }
  std::string out;
  for (const Family* f : families) f->Render(&out);
  return out;
}

}  // namespace tailor::metrics
