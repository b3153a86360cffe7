#ifndef TAILOR_CLIENT_FUSE_COMMAND_H_
#define TAILOR_CLIENT_FUSE_COMMAND_H_

#include <string>
#include <vector>

#include "CLI/CLI.hpp"
#include "storage/object_store_factory.h"

namespace tailor::cli {

// `tailorctl fuse --local ...` (in-process fusion job) and
// `tailorctl apply-patch ...`. Add() registers the subcommand; Run() is
// called when it was chosen and returns the exit code.
//
// With `assemble` true the same class is `tailorctl assemble` (issue #20):
// the same spec flags (or -f job.yaml), plus --shards and --from; it
// publishes the spec's outputs from the shard bundles of
// `fuse --local --shard I --shards N --shard-dir DIR`.
class FuseCommand {
 public:
  explicit FuseCommand(bool assemble = false) : assemble_(assemble) {}
  CLI::App* Add(CLI::App& app);
  int Run();

 private:
  CLI::App* cmd_ = nullptr;
  bool assemble_ = false;
  int shard_ = 0, shards_ = 0;
  std::string shard_dir_;  // --shard-dir (fuse) or --from (assemble)
  bool local_ = false;
  std::string job_file_;
  std::string pretrained_;
  std::vector<std::string> finetuned_, patches_, hessians_, labels_;
  std::string method_, scope_, normalize_, compensation_, dead_columns_,
      aggregate_, on_mismatch_;
  double keep_ = 0, omega_ = 0, damp_ = 0, lambda_ = 0, density_ = 0, drop_ = 0;
  double t_ = 0, gamma_ = 0, epsilon_ = 0;
  std::vector<double> weights_;
  bool normalize_weights_ = false;
  std::string count_rule_, sign_cancel_, variant_;
  int64_t block_size_ = 0;
  uint64_t seed_ = 0;
  bool float64_ = false, overwrite_ = false;
  std::vector<std::string> include_, exclude_, allowed_roots_;
  RemoteStorageFlags remote_;
  std::string out_, patch_out_, report_, device_;
  int threads_ = 0;
  int workers_ = 0;  // 0: one per compute thread
  bool quiet_ = false;
};

class ApplyPatchCommand {
 public:
  CLI::App* Add(CLI::App& app);
  int Run();

 private:
  std::string pretrained_, patch_, out_;
  bool overwrite_ = false;
  std::vector<std::string> allowed_roots_;
  RemoteStorageFlags remote_;
};

}  // namespace tailor::cli

#endif  // TAILOR_CLIENT_FUSE_COMMAND_H_
