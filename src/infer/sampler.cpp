#include "infer/sampler.h"

#include "core/error.h"
#include "cpu/sample.h"

namespace moex::infer {

void check_sampling_params(const SamplingParams& p) {
  MOEX_CHECK(p.temperature >= 0, "temperature must be >= 0 (got ", p.temperature, ")");
  MOEX_CHECK(p.top_p > 0 && p.top_p <= 1, "top_p must be in (0, 1] (got ", p.top_p, ")");
  MOEX_CHECK(p.top_k >= 0, "top_k must be >= 0 (got ", p.top_k, ")");
}

int32_t sample_token(const float* logits, int64_t vocab_size, const SamplingParams& p,
                     uint64_t draw) {
  MOEX_CHECK(vocab_size > 0, "sample_token: vocab_size must be > 0");
  check_sampling_params(p);
  return cpu::sample_row(logits, vocab_size, p.temperature, p.top_k, p.top_p, p.seed, draw);
}

}  // namespace moex::infer
