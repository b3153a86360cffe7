#ifndef TAILOR_JOBS_CALLER_H_
#define TAILOR_JOBS_CALLER_H_

// Who calls the job manager: the authenticated principal of an RPC (the
// server maps its Principal to this), or the process itself. Plain value,
// torch-free and RPC-free.

#include <string>
#include <vector>

namespace tailor::jobs {

struct Caller {
  // The principal's name; recorded as a new job's `creator`. Empty for the
  // process itself and for jobs stored before creators were recorded.
  std::string principal;
  // Role admin: sees and acts on every job. Otherwise a caller sees only the
  // jobs it created; any other job is NOT_FOUND (its existence is not
  // revealed).
  bool admin = false;
  // The principal's own allowed roots (absolute directories): every URI of
  // a job it creates must lie inside one of them as well as inside the
  // server's roots (JobRunner::PrepareWithin). Empty: the server's roots.
  std::vector<std::string> allowed_roots;

  // The process itself (tests, tools, single-user tailord without
  // authentication): an admin with no name.
  static Caller System() { return Caller{"", true, {}}; }

  // Whether this caller may see and act on a job created by `creator`.
  bool MaySee(const std::string& creator) const {
    return admin || creator == principal;
  }
};

}  // namespace tailor::jobs

#endif  // TAILOR_JOBS_CALLER_H_
