#include "server/stream_registry.h"

#include <algorithm>

namespace tailor::server {

StreamRegistry::StreamRegistry(metrics::Family* gauge, int limit)
    : gauge_(gauge), limit_(std::max(1, limit)) {
  gauge_->Init({});
}

bool StreamRegistry::Add(DrainableStream* stream) {
  absl::MutexLock lock(&mu_);
  if (streams_.size() >= static_cast<size_t>(limit_)) return false;
  streams_.insert(stream);
  Publish();
  return true;
}

void StreamRegistry::Remove(DrainableStream* stream) {
  absl::MutexLock lock(&mu_);
  streams_.erase(stream);
  Publish();
}

void StreamRegistry::CloseAll() {
  absl::MutexLock lock(&mu_);
  closed_.store(true);
  for (DrainableStream* stream : streams_) stream->Close();
}

bool StreamRegistry::WaitUntilEmpty(absl::Time deadline) {
  absl::MutexLock lock(&mu_);
  return mu_.AwaitWithDeadline(absl::Condition(this, &StreamRegistry::Empty),
                               deadline);
}

void StreamRegistry::Publish() {
  gauge_->Set({}, static_cast<double>(streams_.size()));
}

}  // namespace tailor::server
