#include "cpu/adamw.h"

#include <cmath>
#include <type_traits>

#include "core/dtype.h"
#include "core/error.h"
#include "core/stochastic_round.h"
#include "cpu/parallel.h"
#include "cpu/simd_clones.h"

namespace moex::cpu {
namespace {

// What the step computes in: double for double weights, fp32 otherwise (bf16 state is widened).
template <typename P>
using Compute = std::conditional_t<std::is_same_v<P, double>, double, float>;

// The step's scalars, in T.
template <typename T>
struct Coefficients {
  T decay, b1, one_minus_b1, b2, one_minus_b2, step_size, inv_sqrt_bc2, eps, gscale;
  uint32_t step;  // seeds the stochastic rounding of bf16 state
};

// A stored value as its compute type: fp32/fp64 as it is, bf16 bits widened.
inline float widen(float x) {
  return x;
}
inline double widen(double x) {
  return x;
}
inline float widen(uint16_t h) {
  return bf16_bits_to_f32(h);
}

// The update over [0, n), one loop the compiler vectorizes (plain arguments, no closure: loads
// through a captured struct keep GCC from vectorizing); with kCopy each updated weight also goes to
// param_bf16, rounded. The AVX2 clone runs the bf16 rounding's narrowing about twice as fast
// (docs/parallelism.md, "ZeRO-Offload").
template <typename P, typename G, typename M, bool kCopy>
MOEX_AVX2_CLONE void update(P* param, const G* grad, M* exp_avg, M* exp_avg_sq,
                            uint16_t* param_bf16, int64_t n, const Coefficients<Compute<P>>& k) {
  using T = Compute<P>;
  constexpr bool kBf16Moments = std::is_same_v<M, uint16_t>;
  constexpr bool kBf16Weights = std::is_same_v<P, uint16_t>;
  const T decay = k.decay, b1 = k.b1, one_minus_b1 = k.one_minus_b1, b2 = k.b2;
  const T one_minus_b2 = k.one_minus_b2, step_size = k.step_size, inv_sqrt_bc2 = k.inv_sqrt_bc2;
  const T eps = k.eps, gscale = k.gscale;
  const uint32_t step = k.step;
#pragma omp parallel for simd schedule(static) if (n >= kMinParallelWork)
  for (int64_t i = 0; i < n; ++i) {
    const T raw = widen(grad[i]), before = widen(param[i]);
    const T g = raw * gscale;
    const T m = b1 * widen(exp_avg[i]) + one_minus_b1 * g;
    const T v = b2 * widen(exp_avg_sq[i]) + one_minus_b2 * g * g;
    uint32_t r = 0;
    if constexpr (kBf16Moments || kBf16Weights) r = adam_rounding_bits(raw, before, step);
    if constexpr (kBf16Moments) {
      exp_avg[i] = f32_to_bf16_stochastic(m, r);
      exp_avg_sq[i] = f32_to_bf16_stochastic(v, r >> 16);
    } else {
      (void)step;
      exp_avg[i] = m;
      exp_avg_sq[i] = v;
    }
    const T p = before * decay - step_size * m / (std::sqrt(v) * inv_sqrt_bc2 + eps);
    if constexpr (kBf16Weights)
      param[i] = f32_to_bf16_stochastic(p, adam_weight_rounding_bits(r));
    else
      param[i] = p;
    if constexpr (kCopy) param_bf16[i] = f32_to_bf16(p);
  }
}

}  // namespace

template <typename P, typename G, typename M>
void adamw_step(P* param, const G* grad, M* exp_avg, M* exp_avg_sq, int64_t n, int64_t step,
                const AdamWConfig& c, uint16_t* param_bf16) {
  using T = Compute<P>;
  static_assert(std::is_same_v<G, T> || (std::is_same_v<G, uint16_t> && std::is_same_v<T, float>),
                "adamw_step: gradients are T, or bf16 bits with fp32 compute");
  static_assert(std::is_same_v<M, T> || (std::is_same_v<M, uint16_t> && std::is_same_v<T, float>),
                "adamw_step: moments are T, or bf16 bits with fp32 compute");
  MOEX_CHECK(n >= 0, "adamw_step: n must be >= 0, got ", n);
  MOEX_CHECK(step >= 1, "adamw_step: step must be >= 1 (1-based), got ", step);
  MOEX_CHECK(c.lr >= 0, "adamw_step: lr must be >= 0, got ", c.lr);
  MOEX_CHECK(c.beta1 >= 0 && c.beta1 < 1, "adamw_step: beta1 must be in [0, 1), got ", c.beta1);
  MOEX_CHECK(c.beta2 >= 0 && c.beta2 < 1, "adamw_step: beta2 must be in [0, 1), got ", c.beta2);
  MOEX_CHECK(c.eps >= 0, "adamw_step: eps must be >= 0, got ", c.eps);
  MOEX_CHECK(c.weight_decay >= 0, "adamw_step: weight_decay must be >= 0, got ", c.weight_decay);
  if (n == 0) return;
  MOEX_CHECK(param && grad, "adamw_step: param or grad is null");
  MOEX_CHECK(exp_avg && exp_avg_sq, "adamw_step: exp_avg or exp_avg_sq is null");
  // Scalars in double, then one fused elementwise loop.
  const double bc1 = 1.0 - std::pow(c.beta1, static_cast<double>(step));
  const double bc2 = 1.0 - std::pow(c.beta2, static_cast<double>(step));
  Coefficients<T> k;
  k.decay = static_cast<T>(1.0 - c.lr * c.weight_decay);
  k.b1 = static_cast<T>(c.beta1);
  k.one_minus_b1 = static_cast<T>(1.0 - c.beta1);
  k.b2 = static_cast<T>(c.beta2);
  k.one_minus_b2 = static_cast<T>(1.0 - c.beta2);
  k.step_size = static_cast<T>(c.lr / bc1);
  k.inv_sqrt_bc2 = static_cast<T>(1.0 / std::sqrt(bc2));
  k.eps = static_cast<T>(c.eps);
  k.gscale = static_cast<T>(c.grad_scale);
  k.step = static_cast<uint32_t>(step);
  if (param_bf16 == nullptr)
    return update<P, G, M, false>(param, grad, exp_avg, exp_avg_sq, nullptr, n, k);
  if constexpr (std::is_same_v<P, float>) {
    update<P, G, M, true>(param, grad, exp_avg, exp_avg_sq, param_bf16, n, k);
  } else {
    MOEX_CHECK(false, "adamw_step: a bf16 copy needs f32 parameters");
  }
}

template void adamw_step<double>(double*, const double*, double*, double*, int64_t, int64_t,
                                 const AdamWConfig&, uint16_t*);
// fp32 compute: weights, gradients and moments each fp32 or bf16 bits.
#define MOEX_ADAMW_FLOAT(P, G, M)                                                               \
  template void adamw_step<P, G, M>(P*, const G*, M*, M*, int64_t, int64_t, const AdamWConfig&, \
                                    uint16_t*);
MOEX_ADAMW_FLOAT(float, float, float)
MOEX_ADAMW_FLOAT(float, float, uint16_t)
MOEX_ADAMW_FLOAT(float, uint16_t, float)
MOEX_ADAMW_FLOAT(float, uint16_t, uint16_t)
MOEX_ADAMW_FLOAT(uint16_t, float, float)
MOEX_ADAMW_FLOAT(uint16_t, float, uint16_t)
MOEX_ADAMW_FLOAT(uint16_t, uint16_t, float)
MOEX_ADAMW_FLOAT(uint16_t, uint16_t, uint16_t)
#undef MOEX_ADAMW_FLOAT

}  // namespace moex::cpu
