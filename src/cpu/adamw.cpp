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

// The step's scalars, in T.
template <typename T>
struct Coefficients {
  T decay, b1, one_minus_b1, b2, one_minus_b2, step_size, inv_sqrt_bc2, eps, gscale;
  uint32_t step;  // seeds the stochastic rounding of bf16 moments
};

// A stored moment as T: fp32/fp64 as it is, bf16 bits widened.
template <typename T>
inline T moment_value(T m) {
  return m;
}
inline float moment_value(uint16_t m) { return bf16_bits_to_f32(m); }

// The update over [0, n), one loop the compiler vectorizes (plain arguments, no closure: loads
// through a captured struct keep GCC from vectorizing); with kCopy each updated weight also goes to
// param_bf16, rounded. The AVX2 clone runs the bf16 rounding's narrowing about twice as fast
// (docs/parallelism.md, "ZeRO-Offload").
template <typename T, typename M, bool kCopy>
MOEX_AVX2_CLONE void update(T* param, const T* grad, M* exp_avg, M* exp_avg_sq,
                            uint16_t* param_bf16, int64_t n, const Coefficients<T>& k) {
  const T decay = k.decay, b1 = k.b1, one_minus_b1 = k.one_minus_b1, b2 = k.b2;
  const T one_minus_b2 = k.one_minus_b2, step_size = k.step_size, inv_sqrt_bc2 = k.inv_sqrt_bc2;
  const T eps = k.eps, gscale = k.gscale;
  const uint32_t step = k.step;
#pragma omp parallel for simd schedule(static) if (n >= kMinParallelWork)
  for (int64_t i = 0; i < n; ++i) {
    const T g = grad[i] * gscale;
    const T m = b1 * moment_value(exp_avg[i]) + one_minus_b1 * g;
    const T v = b2 * moment_value(exp_avg_sq[i]) + one_minus_b2 * g * g;
    if constexpr (std::is_same_v<M, uint16_t>) {
      const uint32_t r = adam_rounding_bits(grad[i], param[i], step);
      exp_avg[i] = f32_to_bf16_stochastic(m, r);
      exp_avg_sq[i] = f32_to_bf16_stochastic(v, r >> 16);
    } else {
      (void)step;
      exp_avg[i] = m;
      exp_avg_sq[i] = v;
    }
    const T p = param[i] * decay - step_size * m / (std::sqrt(v) * inv_sqrt_bc2 + eps);
    param[i] = p;
    if constexpr (kCopy) param_bf16[i] = f32_to_bf16(p);
  }
}

}  // namespace

template <typename T, typename M>
void adamw_step(T* param, const T* grad, M* exp_avg, M* exp_avg_sq, int64_t n, int64_t step,
                const AdamWConfig& c, uint16_t* param_bf16) {
  static_assert(std::is_same_v<M, T> || (std::is_same_v<M, uint16_t> && std::is_same_v<T, float>),
                "adamw_step: moments are T, or bf16 bits with float weights");
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
    return update<T, M, false>(param, grad, exp_avg, exp_avg_sq, nullptr, n, k);
  if constexpr (std::is_same_v<T, float>) {
    update<T, M, true>(param, grad, exp_avg, exp_avg_sq, param_bf16, n, k);
  } else {
    MOEX_CHECK(false, "adamw_step: a bf16 copy needs f32 parameters");
  }
}

template void adamw_step<float>(float*, const float*, float*, float*, int64_t, int64_t,
                                const AdamWConfig&, uint16_t*);
template void adamw_step<double>(double*, const double*, double*, double*, int64_t, int64_t,
                                 const AdamWConfig&, uint16_t*);
template void adamw_step<float, uint16_t>(float*, const float*, uint16_t*, uint16_t*, int64_t,
                                          int64_t, const AdamWConfig&, uint16_t*);

}  // namespace moex::cpu
