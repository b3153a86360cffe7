#ifndef TAILOR_UTIL_FNV1A_H_
#define TAILOR_UTIL_FNV1A_H_

// 64-bit FNV-1a: a hash that is the same across builds, processes and
// machines (unlike std::hash), for seeds and stable buckets. Torch-free.

#include <cstdint>

#include "absl/strings/string_view.h"

namespace tailor {

// FNV-1a over the bytes of `text` (offset basis 0xcbf29ce484222325, prime
// 0x100000001b3).
inline uint64_t Fnv1a(absl::string_view text) {
  uint64_t h = 0xcbf29ce484222325ull;
  for (unsigned char c : text) {
    h ^= c;
    h *= 0x100000001b3ull;
  }
  return h;
}

}  // namespace tailor

#endif  // TAILOR_UTIL_FNV1A_H_
