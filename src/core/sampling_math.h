// The arithmetic of temperature / top-k / top-p sampling that both sampler twins (cpu/sample.h,
// cuda/sample.h) share, so that they draw the same token (docs/gpu-model.md §Decoding).
//
// A token's weight is its unnormalized probability as a 64-bit fixed-point integer:
//   w = floor(2^40 * expf((logit - max_logit) * (1/T)))      (fp32 exponent, w(max) = 2^40).
// Integer sums are exact, so a running total is the same in every summation order: the GPU sums
// its bins in any thread order and still matches the CPU's sorted walk. The fp32 exponentials of
// the two twins may differ in the last bit, which moves a token's weight by a few units of 2^-40;
// a draw can then differ only when it lands that close to a boundary (~1e-9 of draws).
// Tokens below max_logit - 27.7 T weigh 0 (probability under 2^-40 of the top token's): they
// are counted by top-k but are never drawn.
// Header-only and usable from CUDA code (MOEX_HD).
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

#include "core/rng.h"

namespace moex {

constexpr int kSampleWeightBits = 40;
// The largest vocabulary sampled: its total weight stays below 2^64 (2^23 tokens of at most 2^40).
constexpr int64_t kMaxSampledVocab = int64_t{1} << 23;

// A token's place in the sampling order as one distinct 64-bit key, larger first: the logit's bits
// made monotone (-0 taken as +0, which compares equal to it), then the complement of the id (lower
// ids first among equal logits). Never 0.
MOEX_HD uint64_t sampling_order_key(float logit, int64_t id) {
#if defined(__CUDA_ARCH__)
  uint32_t b = __float_as_uint(logit);
#else
  uint32_t b;
  std::memcpy(&b, &logit, sizeof(b));
#endif
  b = (b << 1) == 0 ? 0 : b;  // -0 as +0
  // Negative: every bit flipped; otherwise the sign bit set. Without branches: random signs would
  // mispredict half the time on the CPU.
  b ^= static_cast<uint32_t>(static_cast<int32_t>(b) >> 31) | 0x80000000u;
  return (static_cast<uint64_t>(b) << 32) | ~static_cast<uint32_t>(id);
}
MOEX_HD int32_t sampling_key_id(uint64_t key) {
  return static_cast<int32_t>(~static_cast<uint32_t>(key));
}

// 1/T, rounded to fp32 once (the weight multiplies by it).
MOEX_HD float sampling_inverse_temperature(double temperature) {
  return static_cast<float>(1.0 / temperature);
}

// The fixed-point weight of a logit. A logit equal to the maximum weighs 2^40 exactly (also when
// both are -inf); NaN gives 0.
MOEX_HD uint64_t sampling_weight(float logit, float max_logit, float inverse_temperature) {
  constexpr float kOne = static_cast<float>(uint64_t{1} << kSampleWeightBits);
  if (logit == max_logit) return uint64_t{1} << kSampleWeightBits;
  const float x = (logit - max_logit) * inverse_temperature;
  if (!(x > -28.0f)) return 0;  // expf(-28) * 2^40 < 1; also NaN
  return static_cast<uint64_t>(expf(x) * kOne);
}

// The top-p cut-off: the fewest tokens (in order) whose running weight reaches this.
MOEX_HD uint64_t top_p_target(double top_p, uint64_t total) {
  const double t = ceil(top_p * static_cast<double>(total));
  if (!(t < static_cast<double>(total))) return total;
  return t < 1.0 ? (total > 0 ? 1 : 0) : static_cast<uint64_t>(t);
}

// The draw: the first token (in order) whose running weight passes (>) this; below total.
MOEX_HD uint64_t draw_target(float u, uint64_t total) {
  if (total == 0) return 0;
  const double t = floor(static_cast<double>(u) * static_cast<double>(total));
  return t < static_cast<double>(total) ? static_cast<uint64_t>(t) : total - 1;
}

// The uniform variate of a row's draw (seed, draw counter).
MOEX_HD float sampling_uniform(uint64_t seed, uint64_t draw) {
  return philox_uniform(seed, 0x5a3d1e, draw);
}

}  // namespace moex
