#include "cpu/adamw.h"

#include <cmath>

#include "core/error.h"
#include "cpu/parallel.h"

namespace moex::cpu {

template <typename T>
void adamw_step(T* param, const T* grad, T* exp_avg, T* exp_avg_sq, int64_t n, int64_t step,
                const AdamWConfig& c) {
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
  // Scalars in double, then one fused elementwise loop the compiler vectorizes.
  const double bc1 = 1.0 - std::pow(c.beta1, static_cast<double>(step));
  const double bc2 = 1.0 - std::pow(c.beta2, static_cast<double>(step));
  const T decay = static_cast<T>(1.0 - c.lr * c.weight_decay);
  const T b1 = static_cast<T>(c.beta1), one_minus_b1 = static_cast<T>(1.0 - c.beta1);
  const T b2 = static_cast<T>(c.beta2), one_minus_b2 = static_cast<T>(1.0 - c.beta2);
  const T step_size = static_cast<T>(c.lr / bc1);
  const T inv_sqrt_bc2 = static_cast<T>(1.0 / std::sqrt(bc2));
  const T eps = static_cast<T>(c.eps);
  const T gscale = static_cast<T>(c.grad_scale);
#pragma omp parallel for simd schedule(static) if (n >= kMinParallelWork)
  for (int64_t i = 0; i < n; ++i) {
    const T g = grad[i] * gscale;
    const T m = b1 * exp_avg[i] + one_minus_b1 * g;
    const T v = b2 * exp_avg_sq[i] + one_minus_b2 * g * g;
    exp_avg[i] = m;
    exp_avg_sq[i] = v;
    param[i] = param[i] * decay - step_size * m / (std::sqrt(v) * inv_sqrt_bc2 + eps);
  }
}

template void adamw_step<float>(float*, const float*, float*, float*, int64_t, int64_t,
                                const AdamWConfig&);
template void adamw_step<double>(double*, const double*, double*, double*, int64_t, int64_t,
                                 const AdamWConfig&);

}  // namespace moex::cpu
