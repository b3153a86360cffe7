#ifndef TAILOR_TESTS_MODEL_TINY_LLAMA_H_
#define TAILOR_TESTS_MODEL_TINY_LLAMA_H_

#include "demo/byte_corpus.h"
#include "model/llama_config.h"

namespace tailor::testing {

// A byte-level LLaMA small enough for float64 checks: grouped-query
// attention (4 heads, 2 KV heads), hidden 16.
inline LlamaConfig TinyByteLlama(int64_t layers) {
  LlamaConfig c;
  c.hidden_size = 16;
  c.intermediate_size = 24;
  c.num_hidden_layers = layers;
  c.num_attention_heads = 4;
  c.num_key_value_heads = 2;
  c.vocab_size = kByteLevelVocabSize;
  return c;
}

}  // namespace tailor::testing

#endif  // TAILOR_TESTS_MODEL_TINY_LLAMA_H_
