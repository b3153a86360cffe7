#include "util/cpu_tuning.h"

#include <dlfcn.h>
#include <sched.h>

#include <algorithm>
#include <cmath>
#include <fstream>
#include <sstream>
#include <thread>

namespace tailor {
namespace {

// The first line of `path`, or "" when it cannot be read.
std::string FirstLine(const std::string& path) {
  std::ifstream in(path);
  std::string line;
  if (!in || !std::getline(in, line)) return "";
  return line;
}

// CPUs granted by a quota of `quota` per `period` (both > 0), rounded up.
int QuotaCpus(double quota, double period) {
  return std::max(1, static_cast<int>(std::ceil(quota / period - 1e-9)));
}

// The cgroup quota in CPUs, or 0 when there is none (or it is unreadable).
int CgroupCpus(const std::string& root) {
  // cgroup v2: "max 100000" or "<quota> <period>".
  std::istringstream v2(FirstLine(root + "/cpu.max"));
  std::string quota;
  double period = 0;
  if (v2 >> quota >> period && quota != "max" && period > 0) {
    try {
      const double q = std::stod(quota);
      if (q > 0) return QuotaCpus(q, period);
    } catch (...) {
    }
  }
  // cgroup v1: -1 = no quota.
  for (const std::string dir : {"/cpu", "/cpu,cpuacct", ""}) {
    const std::string q = FirstLine(root + dir + "/cpu.cfs_quota_us");
    const std::string p = FirstLine(root + dir + "/cpu.cfs_period_us");
    if (q.empty() || p.empty()) continue;
    try {
      const double qv = std::stod(q), pv = std::stod(p);
      if (qv > 0 && pv > 0) return QuotaCpus(qv, pv);
    } catch (...) {
    }
    return 0;
  }
  return 0;
}

int AffinityCpus() {
  cpu_set_t set;
  CPU_ZERO(&set);
  if (sched_getaffinity(0, sizeof(set), &set) == 0) {
    const int n = CPU_COUNT(&set);
    if (n > 0) return n;
  }
  return std::max(1u, std::thread::hardware_concurrency());
}

}  // namespace

bool SetBlasThreads(int n) {
  using SetThreads = void (*)(int);
  void* symbol = ::dlsym(RTLD_DEFAULT, "openblas_set_num_threads");
  if (symbol == nullptr || n < 1) return false;
  reinterpret_cast<SetThreads>(symbol)(n);
  return true;
}

int AvailableCpus(const std::string& cgroup_root) {
  const int affinity = AffinityCpus();
  const int quota = CgroupCpus(cgroup_root);
  return quota > 0 ? std::min(quota, affinity) : affinity;
}

}  // namespace tailor
