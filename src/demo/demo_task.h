#ifndef TAILOR_DEMO_DEMO_TASK_H_
#define TAILOR_DEMO_DEMO_TASK_H_

#include <ATen/core/Tensor.h>

#include <string>

#include "demo/byte_corpus.h"

namespace tailor {

// One task of the forgetting benchmark: a corpus and its held-out windows.
struct DemoTask {
  std::string key;  // "A" | "B" | "C"
  ByteCorpus corpus;
  at::Tensor eval_windows;
};

}  // namespace tailor

#endif  // TAILOR_DEMO_DEMO_TASK_H_
