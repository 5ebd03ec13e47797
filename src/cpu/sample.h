// Next-token sampling per row: greedy at temperature 0, else temperature, top-k and top-p
// (nucleus) filtering drawn with the counter-based RNG. The host sampler (infer/sampler.h) is this
// code too. Twin: cuda/sample.h.
#pragma once

#include <cstdint>

namespace moex::cpu {

// One row's token from logits [vocab]: the largest logit (lowest id on ties) at temperature 0;
// otherwise the tokens in order of logit (ties: lower id first), the first top_k of them (0: all),
// then the fewest whose running weight reaches top_p_target, and the first whose running weight
// passes draw_target(u) of their total, with the fixed-point weights of core/sampling_math.h and
// u = sampling_uniform(seed, draw). Parameters are not checked here
// (infer::check_sampling_params).
int32_t sample_row(const float* logits, int64_t vocab, double temperature, int64_t top_k,
                   double top_p, uint64_t seed, uint64_t draw);

// out[s] = sample_row(x + s * cols, ...) with row s's parameters in params [rows, 10] i32, the
// bytes of {f64 temperature, f64 top_p, i64 top_k, u64 seed, u64 draw} (ops/sample.h).
void sample_rows(const float* x, int64_t rows, int64_t cols, const int32_t* params, int32_t* out);

}  // namespace moex::cpu
