#ifndef TAILOR_IO_PEFT_CONFIG_H_
#define TAILOR_IO_PEFT_CONFIG_H_

// A PEFT LoRA adapter_config.json: what of it changes the merged weights,
// checked (torch-free). PEFT's own code is the reference
// (peft/tuners/lora/config.py, peft/tuners/tuners_utils.py).
//
// rank_pattern / alpha_pattern. PEFT's get_pattern_key() returns the first key,
// in the file's (dict) order, for which re.match(rf"(.*\.)?({key})$", module)
// succeeds: keys are regular expressions matched against the whole module
// name or a dot-separated suffix of it, and rank and alpha are looked up
// independently. We do the same with RE2 (a full match of
// "(.*\.)?(<key>)", i.e. Python's re.fullmatch; RE2 agrees with Python's re
// on the constructs such keys use, and matches in linear time whatever the
// key, which a hostile config could otherwise exploit); a key RE2 cannot
// compile (backreferences, lookaround, longer than 1000 bytes) is refused
// rather than guessed.
//

#include <map>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "util/regex.h"

namespace tailor {

// The parts of a PEFT adapter_config.json that change the merged weights.
struct LoraConfig {
  int r = 0;
  double lora_alpha = 0;
  bool fan_in_fan_out = false;
  bool use_rslora = false;  // scaling = alpha / sqrt(r) instead of alpha / r
  // Per-module overrides, keyed by PEFT's pattern (a module-name suffix).
  std::map<std::string, int> rank_pattern;
  std::map<std::string, double> alpha_pattern;
  std::vector<std::string> target_modules;   // informational
  std::vector<std::string> modules_to_save;  // informational
};

// One rank_pattern / alpha_pattern entry, compiled.
struct PeftPattern {
  std::string key;
  Regex regex;
  double value = 0;
};

struct PeftConfig {
  LoraConfig config;
  std::vector<PeftPattern> rank_patterns;   // file order
  std::vector<PeftPattern> alpha_patterns;  // file order
};

// Parses the config text read from `path` (named in errors). Requires
// peft_type LORA, r > 0 and a finite lora_alpha; refuses the variants whose
// merge is not W + scaling * B @ A over the original base (DoRA, LoRA bias,
// QALoRA, layer replication, trainable tokens, target parameters, aLoRA,
// PiSSA-style initialisations) and pattern keys RE2 cannot compile. Errors
// are INVALID_ARGUMENT naming `path` and the field.
absl::StatusOr<PeftConfig> ParsePeftConfig(const std::string& path,
                                           const std::string& text);

// PEFT's get_pattern_key: the first pattern (in file order) matching the
// whole module name or a dot-separated suffix of it; null if none does.
const PeftPattern* MatchPeftPattern(const std::vector<PeftPattern>& patterns,
                                    const std::string& module);

}  // namespace tailor

#endif  // TAILOR_IO_PEFT_CONFIG_H_
