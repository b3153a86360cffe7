#include "util/fnv1a.h"

#include <gtest/gtest.h>

namespace tailor {
namespace {

// The published FNV-1a 64-bit test vectors: the hash must not change, as
// DARE's draws (merge_methods.cc) and list page tokens (job_filter.cc)
// depend on it.
TEST(Fnv1aTest, PublishedVectors) {
  EXPECT_EQ(Fnv1a(""), 0xcbf29ce484222325ull);
  EXPECT_EQ(Fnv1a("a"), 0xaf63dc4c8601ec8cull);
  EXPECT_EQ(Fnv1a("foobar"), 0x85944171f73967e8ull);
}

}  // namespace
}  // namespace tailor
