// Stochastic rounding of fp32 to bf16, for state kept in bf16 that moves by small steps (Adam's
// moments with optimizer.moments_dtype "bf16", docs/architecture.md §Numerics, and bf16 master
// weights, docs/gpu-model.md §bf16 master weights). Rounding to
// nearest would lose every change under half a bf16 unit: with beta2 = 0.999 the second moment
// could then neither grow nor decay. Rounding up with probability (distance to the lower
// neighbour) / (gap) keeps each stored value unbiased.
//
// The random bits of an Adam element are a hash of its gradient, its weight before the step and
// the step number: no position, so every parallel layout (tp, ep, ZeRO shards, offload tiles)
// rounds an element alike, and the CPU and CUDA twins give the same bits.
// Header-only and usable from CUDA code (MOEX_HD).
#pragma once

#include <cstdint>

#include "core/float_bits.h"

namespace moex {

// The murmur3 finaliser: every input bit flips about half of the output bits.
MOEX_HD uint32_t mix32(uint32_t x) {
  x ^= x >> 16;
  x *= 0x85ebca6bu;
  x ^= x >> 13;
  x *= 0xc2b2ae35u;
  x ^= x >> 16;
  return x;
}

// f as bf16 bits, rounded down or up (in magnitude) by the low 16 bits of `random`: adding them
// below the kept half carries into it with probability (dropped bits) / 2^16. Infinities stay;
// NaN stays a quiet NaN; a finite value above the largest bf16 becomes infinite with the
// probability of rounding up (to nearest, most of that range does so always).
MOEX_HD uint16_t f32_to_bf16_stochastic(float f, uint32_t random) {
  const uint32_t bits = float_bits(f);
  const bool special = (bits & 0x7f800000u) == 0x7f800000u;
  const bool nan = (bits & 0x7fffffffu) > 0x7f800000u;
  const uint32_t rounded = (bits + (random & 0xffffu)) >> 16;
  const uint32_t kept = (bits >> 16) | (nan ? 0x40u : 0u);
  return static_cast<uint16_t>(special ? kept : rounded);
}

MOEX_HD float bf16_bits_to_f32(uint16_t h) {
  return bits_float(static_cast<uint32_t>(h) << 16);
}

// 32 random bits for one Adam element's two moments (low half: exp_avg, high half: exp_avg_sq)
// from its raw gradient, its weight before the step and the 1-based step.
MOEX_HD uint32_t adam_rounding_bits(float grad, float param, uint32_t step) {
  return mix32(float_bits(grad) ^ mix32(float_bits(param) + step * 0x9e3779b9u));
}

// The bits that round a bf16 master weight's update (optimizer.master_dtype "bf16"), from the
// element's moment bits above: the high half of a multiplicative rehash, so they are not the
// moments' halves (one multiply: the AdamW pass is short of instruction issue, not of bits).
MOEX_HD uint32_t adam_weight_rounding_bits(uint32_t moment_bits) {
  return (moment_bits * 0x9e3779b1u) >> 16;
}

}  // namespace moex
