// Counter-based RNG (Philox4x32-10). A value is a pure function of (seed, offset, index), so the
// CPU and the GPU draw the same numbers for RTS, jitter and Gumbel sampling, in any thread order.
// Header-only and usable from CUDA code (MOEX_HD).
#pragma once

#include <cmath>
#include <cstdint>

#if defined(__CUDACC__)
#define MOEX_HD __host__ __device__ __forceinline__
#else
#define MOEX_HD inline
#endif

namespace moex {

struct Philox4x32 {
  uint32_t v[4];
};

MOEX_HD uint32_t mulhilo32(uint32_t a, uint32_t b, uint32_t* hi) {
  const uint64_t product = static_cast<uint64_t>(a) * b;
  *hi = static_cast<uint32_t>(product >> 32);
  return static_cast<uint32_t>(product);
}

// Ten rounds of Philox4x32 (Salmon et al., "Parallel random numbers: as easy as 1, 2, 3").
MOEX_HD Philox4x32 philox4x32_10(Philox4x32 ctr, uint32_t key0, uint32_t key1) {
  constexpr uint32_t kMul0 = 0xD2511F53u, kMul1 = 0xCD9E8D57u;
  constexpr uint32_t kWeyl0 = 0x9E3779B9u, kWeyl1 = 0xBB67AE85u;
  for (int round = 0; round < 10; ++round) {
    uint32_t hi0, hi1;
    const uint32_t lo0 = mulhilo32(kMul0, ctr.v[0], &hi0);
    const uint32_t lo1 = mulhilo32(kMul1, ctr.v[2], &hi1);
    Philox4x32 next;
    next.v[0] = hi1 ^ ctr.v[1] ^ key0;
    next.v[1] = lo1;
    next.v[2] = hi0 ^ ctr.v[3] ^ key1;
    next.v[3] = lo0;
    ctr = next;
    key0 += kWeyl0;
    key1 += kWeyl1;
  }
  return ctr;
}

// The index-th 32-bit draw of the stream (seed, offset). Draws 4i..4i+3 share one Philox block.
MOEX_HD uint32_t philox_u32(uint64_t seed, uint64_t offset, uint64_t index) {
  const uint64_t block = index >> 2;
  Philox4x32 ctr{{static_cast<uint32_t>(block), static_cast<uint32_t>(block >> 32),
                  static_cast<uint32_t>(offset), static_cast<uint32_t>(offset >> 32)}};
  const Philox4x32 out = philox4x32_10(ctr, static_cast<uint32_t>(seed), static_cast<uint32_t>(seed >> 32));
  return out.v[index & 3];
}

// Uniform in the open interval (0, 1): never 0 or 1, so log(u) and log(-log(u)) are finite.
MOEX_HD float philox_uniform(uint64_t seed, uint64_t offset, uint64_t index) {
  return (static_cast<float>(philox_u32(seed, offset, index) >> 8) + 0.5f) * (1.0f / 16777216.0f);
}

// Standard Gumbel: -log(-log(u)).
MOEX_HD float philox_gumbel(uint64_t seed, uint64_t offset, uint64_t index) {
  return -logf(-logf(philox_uniform(seed, offset, index)));
}

// Stateful front end for host code: each draw() call consumes one index; offsets separate uses.
class Rng {
 public:
  explicit Rng(uint64_t seed = 0, uint64_t offset = 0) : seed_(seed), offset_(offset) {}
  float uniform() { return philox_uniform(seed_, offset_, counter_++); }
  uint32_t next_u32() { return philox_u32(seed_, offset_, counter_++); }
  // Normal(0, 1) by Box-Muller.
  float normal() {
    const float u1 = uniform(), u2 = uniform();
    return std::sqrt(-2.0f * std::log(u1)) * std::cos(6.28318530717958647692f * u2);
  }
  uint64_t seed() const { return seed_; }
  uint64_t offset() const { return offset_; }
  uint64_t counter() const { return counter_; }
  void set_state(uint64_t offset, uint64_t counter) { offset_ = offset; counter_ = counter; }

 private:
  uint64_t seed_;
  uint64_t offset_;
  uint64_t counter_ = 0;
};

}  // namespace moex
