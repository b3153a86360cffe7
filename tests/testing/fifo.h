#ifndef TAILOR_TESTS_TESTING_FIFO_H_
#define TAILOR_TESTS_TESTING_FIFO_H_

#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <chrono>
#include <future>
#include <string>
#include <utility>

namespace tailor::testing {

// Creates a FIFO at `path` (dies on failure).
inline void MakeFifoOrDie(const std::string& path) {
  ASSERT_EQ(::mkfifo(path.c_str(), 0644), 0) << path;
}

// Runs `fn` (which is given a FIFO to read among its inputs) on another
// thread. If it has not returned within `limit` -- it blocked in open(2) or
// read(2) on `fifo` -- the test fails, and the FIFO is opened for writing
// and closed so that the blocked reader gets end-of-file and the suite goes
// on instead of hanging. Returns fn's result.
template <typename Fn>
auto RunWithFifoGuard(const std::string& fifo, Fn fn,
                      std::chrono::seconds limit = std::chrono::seconds(60)) {
  auto future = std::async(std::launch::async, std::move(fn));
  if (future.wait_for(limit) != std::future_status::ready) {
    ADD_FAILURE() << "blocked for " << limit.count() << " s on FIFO " << fifo;
    for (int i = 0;
         i < 100 && future.wait_for(std::chrono::milliseconds(100)) !=
                        std::future_status::ready;
         ++i) {
      const int fd = ::open(fifo.c_str(), O_WRONLY | O_NONBLOCK);
      if (fd >= 0) ::close(fd);
    }
  }
  return future.get();
}

}  // namespace tailor::testing

#endif  // TAILOR_TESTS_TESTING_FIFO_H_
