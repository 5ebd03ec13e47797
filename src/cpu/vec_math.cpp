#include "cpu/vec_math.h"

#include <cmath>
#include <cstring>

#include "cpu/simd_clones.h"

namespace moex::cpu {
namespace {

// 8 lanes: one AVX2 register in the AVX2 clone of exp_shifted_sum, two SSE registers in the
// baseline x86-64 one. Both clones compute the same lanes with the same operations (no fma
// contraction, -ffp-contract=off), so they give the same bits.
constexpr int kLanes = 8;
typedef float VecF __attribute__((vector_size(kLanes * sizeof(float))));
typedef int32_t VecI __attribute__((vector_size(kLanes * sizeof(int32_t))));

__attribute__((always_inline)) inline VecF splat(float v) {
  return VecF{} + v;
}
__attribute__((always_inline)) inline VecI splat_i(int32_t v) {
  return VecI{} + v;
}

// exp of the lanes, each <= 0 (or NaN / -inf). Masks instead of branches so it stays vector code.
__attribute__((always_inline)) inline VecF exp_lanes(VecF x) {
  const VecI underflow = x < splat(-87.3f);       // also -inf; NaN compares false
  const VecF xc = underflow ? splat(-87.0f) : x;  // keep the reduction below in range
  const VecF n = (xc * splat(1.44269504088896341f) + splat(12582912.0f)) - splat(12582912.0f);
  const VecF r = (xc - n * splat(0.693359375f)) - n * splat(-2.12194440e-4f);  // ln2 = hi + lo
  VecF p = splat(1.0f / 720.0f);
  p = p * r + splat(1.0f / 120.0f);
  p = p * r + splat(1.0f / 24.0f);
  p = p * r + splat(1.0f / 6.0f);
  p = p * r + splat(0.5f);
  p = p * r + splat(1.0f);
  p = p * r + splat(1.0f);
  const VecI exponent = (__builtin_convertvector(n, VecI) + splat_i(127)) << 23;
  VecF scale;
  std::memcpy(&scale, &exponent, sizeof(scale));
  return underflow ? splat(0.0f) : p * scale;
}

}  // namespace

MOEX_AVX2_CLONE float exp_shifted_sum(const float* x, float shift, int64_t n, float* y) {
  VecF acc = splat(0.0f);
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes) {
    VecF v;
    std::memcpy(&v, x + i, sizeof(v));
    const VecF e = exp_lanes(v - splat(shift));
    if (y) std::memcpy(y + i, &e, sizeof(e));
    acc += e;
  }
  if (i < n) {  // the tail through the same lanes, so every element gets the same formula
    const int64_t rest = n - i;
    float buf[kLanes] = {0};
    std::memcpy(buf, x + i, rest * sizeof(float));
    VecF v;
    std::memcpy(&v, buf, sizeof(v));
    const VecF e = exp_lanes(v - splat(shift));
    std::memcpy(buf, &e, sizeof(e));
    if (y) std::memcpy(y + i, buf, rest * sizeof(float));
    for (int64_t l = 0; l < rest; ++l) acc[l] += buf[l];
  }
  float sum = 0;
  for (int l = 0; l < kLanes; ++l) sum += acc[l];
  return sum;
}

double exp_shifted_sum(const double* x, double shift, int64_t n, double* y) {
  double sum = 0;
  for (int64_t i = 0; i < n; ++i) {
    const double e = std::exp(x[i] - shift);
    if (y) y[i] = e;
    sum += e;
  }
  return sum;
}

}  // namespace moex::cpu
