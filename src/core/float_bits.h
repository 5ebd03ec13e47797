// A float's bit pattern and back, on the host and in CUDA code (MOEX_HD), for the arithmetic the
// CPU and GPU twins share bit for bit (core/sampling_math.h, core/stochastic_round.h).
#pragma once

#include <cstdint>
#include <cstring>

#include "core/rng.h"

namespace moex {

MOEX_HD uint32_t float_bits(float f) {
#if defined(__CUDA_ARCH__)
  return __float_as_uint(f);
#else
  uint32_t b;
  std::memcpy(&b, &f, sizeof(b));
  return b;
#endif
}

MOEX_HD float bits_float(uint32_t b) {
#if defined(__CUDA_ARCH__)
  return __uint_as_float(b);
#else
  float f;
  std::memcpy(&f, &b, sizeof(f));
  return f;
#endif
}

}  // namespace moex
