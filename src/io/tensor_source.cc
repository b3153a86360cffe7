#include "io/tensor_source.h"

#include <algorithm>

namespace tailor {

const TensorInfo* TensorSource::Find(absl::string_view name) const {
  const std::vector<TensorInfo>& all = tensors();
  auto it = std::lower_bound(
      all.begin(), all.end(), name,
      [](const TensorInfo& t, absl::string_view n) { return t.name < n; });
  if (it == all.end() || it->name != name) return nullptr;
  return &*it;
}

uint64_t TensorSource::TotalBytes() const {
  uint64_t total = 0;
  for (const TensorInfo& t : tensors()) total += t.nbytes;
  return total;
}

}  // namespace tailor
