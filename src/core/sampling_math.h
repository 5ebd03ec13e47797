// The arithmetic of temperature / top-k / top-p sampling that both sampler twins (cpu/sample.h,
// cuda/sample.h) share, so that they draw the same token (docs/gpu-model.md §Decoding).
//
// A token's weight is its unnormalized probability as a 64-bit fixed-point integer:
//   w = floor(2^40 * sampling_exp((logit - max_logit) * (1/T)))        (w(max) = 2^40),
// where sampling_exp is written here from single correctly rounded fp32 operations that no
// compiler may fuse, so it gives the same bits on the CPU and the GPU (a library expf does not).
// Integer sums are exact, so a running total is the same in every summation order: the GPU sums
// its bins in any thread order and still walks exactly the CPU's sorted running totals.
// Tokens below max_logit - 27.7 T weigh 0 (probability under 2^-40 of the top token's): they
// are counted by top-k but are never drawn. NaN logits come after every other logit and weigh 0.
// Header-only and usable from CUDA code (MOEX_HD).
#pragma once

#include <cmath>
#include <cstdint>

#include "core/float_bits.h"
#include "core/rng.h"

namespace moex {

constexpr int kSampleWeightBits = 40;
// The largest vocabulary sampled: its total weight stays below 2^64 (2^23 tokens of at most 2^40).
constexpr int64_t kMaxSampledVocab = int64_t{1} << 23;

// A token's place in the sampling order as one distinct 64-bit key, larger first: the logit's bits
// made monotone (-0 taken as +0, which compares equal to it; NaN below -inf), then the complement
// of the id (lower ids first among equal logits). Never 0.
MOEX_HD uint64_t sampling_order_key(float logit, int64_t id) {
  uint32_t b = float_bits(logit);
  const bool nan = (b & 0x7fffffffu) > 0x7f800000u;
  b = (b << 1) == 0 ? 0 : b;  // -0 as +0
  // Negative: every bit flipped; otherwise the sign bit set. Without branches: random signs would
  // mispredict half the time on the CPU. -inf becomes 0x007fffff, so 0 is below it.
  b ^= static_cast<uint32_t>(static_cast<int32_t>(b) >> 31) | 0x80000000u;
  b = nan ? 0 : b;
  return (static_cast<uint64_t>(b) << 32) | ~static_cast<uint32_t>(id);
}
MOEX_HD int32_t sampling_key_id(uint64_t key) {
  return static_cast<int32_t>(~static_cast<uint32_t>(key));
}

// 1/T, rounded to fp32 once (the weight multiplies by it).
MOEX_HD float sampling_inverse_temperature(double temperature) {
  return static_cast<float>(1.0 / temperature);
}

// a * b and a + b rounded to nearest, never fused into an fma (nvcc fuses unless told; the host
// build passes -ffp-contract=off): the same bits on every device.
MOEX_HD float sampling_mul(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fmul_rn(a, b);
#else
  return a * b;
#endif
}
MOEX_HD float sampling_add(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fadd_rn(a, b);
#else
  return a + b;
#endif
}

// e^x for x in (-28, 0], within ~1e-6 relative, bit for bit the same on the CPU and the GPU:
// x = k ln2 + r (|r| <= ln2 / 2, ln2 in two parts, the first with 12 bits so k * it is exact),
// e^r by its Taylor polynomial to r^7 (error under 1e-8), times 2^k (exact: k >= -41).
MOEX_HD float sampling_exp(float x) {
  // k = x / ln2 rounded to the nearest integer: adding and taking away 1.5 * 2^23 rounds (|k| <
  // 2^22).
  constexpr float kRound = 12582912.0f;
  const float k = sampling_add(sampling_add(sampling_mul(x, 1.44269504f), kRound), -kRound);
  float r = sampling_add(x, sampling_mul(-k, 0.693145751953125f));
  r = sampling_add(r, sampling_mul(-k, 1.42860677e-6f));
  const float taylor[] = {1.0f / 5040, 1.0f / 720, 1.0f / 120, 1.0f / 24, 1.0f / 6, 0.5f, 1.0f};
  float p = taylor[0];
  for (int i = 1; i < 7; ++i) p = sampling_add(sampling_mul(p, r), taylor[i]);
  p = sampling_add(sampling_mul(p, r), 1.0f);
  const float scale = bits_float(static_cast<uint32_t>(127 + static_cast<int>(k)) << 23);  // 2^k
  return sampling_mul(p, scale);
}

// A scaled logit at or below this weighs 0 (e^-28 * 2^40 < 1).
constexpr float kSampleWeightCutoff = -28.0f;

// (logit - max_logit) / T as the weight rounds it: the sampler's other uses of it (the GPU's logit
// bins) must see the same value.
MOEX_HD float sampling_scaled_logit(float logit, float max_logit, float inverse_temperature) {
  return sampling_mul(sampling_add(logit, -max_logit), inverse_temperature);
}

// The fixed-point weight of a logit. A logit equal to the maximum weighs 2^40 exactly (also when
// both are -inf); NaN gives 0.
MOEX_HD uint64_t sampling_weight(float logit, float max_logit, float inverse_temperature) {
  constexpr float kOne = static_cast<float>(uint64_t{1} << kSampleWeightBits);
  if (logit == max_logit) return uint64_t{1} << kSampleWeightBits;
  const float x = sampling_scaled_logit(logit, max_logit, inverse_temperature);
  if (!(x > kSampleWeightCutoff)) return 0;  // also NaN
  return static_cast<uint64_t>(sampling_mul(sampling_exp(x), kOne));
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
