#ifndef TAILOR_CLIENT_MODEL_COMMANDS_H_
#define TAILOR_CLIENT_MODEL_COMMANDS_H_

#include <cstdint>
#include <string>
#include <vector>

#include "CLI/CLI.hpp"
#include "storage/object_store_factory.h"

namespace tailor::cli {

// `tailorctl calibrate`: per-layer input Gram matrices of a LLaMA checkpoint
// on calibration data, written as a tailor-hessian/1 file.
class CalibrateCommand {
 public:
  CLI::App* Add(CLI::App& app);
  int Run();

 private:
  std::string model_, data_, out_, device_ = "auto";
  int64_t samples_ = 128, seq_len_ = 512, batch_size_ = 8;
  int threads_ = 0;
  CLI::App* cmd_ = nullptr;
  std::vector<std::string> merge_;  // --merge OUT PART...
  int shard_ = 0, shards_ = 0;
  std::vector<std::string> allowed_roots_;
  RemoteStorageFlags remote_;
  bool quiet_ = false;
};

// `tailorctl demo`: the forgetting benchmark on real text
// (src/demo/forgetting_demo.h), its tables, JSON and trade-off plot.
class DemoCommand {
 public:
  CLI::App* Add(CLI::App& app);
  int Run();

 private:
  bool quick_ = false;
  std::string json_, workdir_, device_ = "auto";
  int threads_ = 0;
  int jobs_ = 0;
  bool rescore_ = false, no_plot_ = false, quiet_ = false;
};

}  // namespace tailor::cli

#endif  // TAILOR_CLIENT_MODEL_COMMANDS_H_
