#include "demo/score_memo.h"

#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_replace.h"
#include "demo/model_cache.h"
#include "demo/trainer.h"
#include "model/llama.h"
#include "util/file_util.h"
#include "util/json_util.h"
#include "util/sha256.h"
#include "util/status_macros.h"
#include "util/stopwatch.h"

namespace tailor {
namespace {

// Bump when Evaluate changes what a memoized score means.
constexpr int kScoreVersion = 1;

nlohmann::json EvalJson(const EvalResult& r) {
  return {{"accuracy", 100.0 * r.accuracy},
          {"perplexity", r.perplexity},
          {"loss", r.loss},
          {"tokens", r.tokens}};
}

}  // namespace

// SHA-256 over a checkpoint directory's regular files: names, sizes, bytes.
// Demo checkpoints are a few MiB.
absl::StatusOr<std::string> CheckpointDigest(const std::string& dir) {
  TAILOR_ASSIGN_OR_RETURN(std::vector<std::string> names, ListDirectory(dir));
  Sha256 sha;
  for (const std::string& name : names) {
    const std::string path = JoinPath(dir, name);
    if (!IsRegularFile(path)) continue;
    TAILOR_ASSIGN_OR_RETURN(std::string bytes,
                            ReadFileToString(path, uint64_t{1} << 32));
    sha.Update(absl::StrCat(name, "\n", bytes.size(), "\n"));
    sha.Update(bytes);
  }
  return sha.FinalHex();
}

absl::StatusOr<nlohmann::json> DemoScoreMemo::Score(
    const std::string& dir, const std::vector<std::string>& keys) {
  TAILOR_ASSIGN_OR_RETURN(std::string digest, CheckpointDigest(dir));
  const std::string memo_path = JoinPath(
      dir_,
      absl::StrCat("v", kScoreVersion, "-", digest, "-",
                   absl::StrReplaceAll(device_.str(), {{":", "_"}}), ".json"));
  nlohmann::json memo = nlohmann::json::object();
  if (IsRegularFile(memo_path)) {
    // A memo that cannot be read is recomputed and rewritten.
    absl::StatusOr<std::string> text = ReadFileToString(memo_path, 1 << 20);
    if (text.ok()) {
      absl::StatusOr<nlohmann::json> read = ParseJsonStrict(*text, memo_path);
      if (read.ok() && read->is_object()) memo = *std::move(read);
    }
  }
  std::vector<std::string> missing;
  for (const std::string& key : keys) {
    if (!reuse_ || !memo.contains(key)) missing.push_back(key);
  }
  if (missing.empty()) {
    absl::MutexLock lock(&mu_);
    ++hits_;
  } else {
    const Stopwatch timer;
    TAILOR_ASSIGN_OR_RETURN(LlamaModel model,
                            LoadDemoModel(dir, config_, device_));
    for (const std::string& key : missing) {
      TAILOR_ASSIGN_OR_RETURN(EvalResult r,
                              Evaluate(model, tasks_->at(key).eval_windows));
      memo[key] = EvalJson(r);
    }
    TAILOR_RETURN_IF_ERROR(WriteFileAtomically(memo_path, memo.dump(1) + "\n"));
    absl::MutexLock lock(&mu_);
    evaluate_seconds_ += timer.Seconds();
    ++misses_;
  }
  nlohmann::json out = nlohmann::json::object();
  for (const std::string& key : keys) out[key] = memo[key];
  return out;
}

int64_t DemoScoreMemo::hits() const {
  absl::MutexLock lock(&mu_);
  return hits_;
}

int64_t DemoScoreMemo::misses() const {
  absl::MutexLock lock(&mu_);
  return misses_;
}

double DemoScoreMemo::evaluate_seconds() const {
  absl::MutexLock lock(&mu_);
  return evaluate_seconds_;
}

}  // namespace tailor
