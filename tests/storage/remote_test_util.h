#ifndef TAILOR_TESTS_STORAGE_REMOTE_TEST_UTIL_H_
#define TAILOR_TESTS_STORAGE_REMOTE_TEST_UTIL_H_

// Small helpers shared by the remote-storage tests (header-only).

#include <cstdint>
#include <fstream>
#include <map>
#include <random>
#include <sstream>
#include <string>

#include "absl/strings/string_view.h"
#include "storage/aws_config.h"

namespace tailor::testing {

// An EnvLookup over a fixed map (nothing from the process environment).
inline EnvLookup MapEnv(std::map<std::string, std::string> vars) {
  return [vars = std::move(vars)](absl::string_view name) {
    auto it = vars.find(std::string(name));
    return it == vars.end() ? std::string() : it->second;
  };
}

inline std::string RandomBytes(size_t n, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::string s(n, '\0');
  for (size_t i = 0; i < n; ++i) s[i] = static_cast<char>(rng() & 0xFF);
  return s;
}

inline void WriteFile(const std::string& path, absl::string_view data) {
  std::ofstream f(path, std::ios::binary);
  f.write(data.data(), static_cast<std::streamsize>(data.size()));
}

inline std::string ReadFile(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

}  // namespace tailor::testing

#endif  // TAILOR_TESTS_STORAGE_REMOTE_TEST_UTIL_H_
