// AdamW step on flat arrays, as torch.optim.AdamW (amsgrad=False, maximize=False):
//   p -= lr * weight_decay * p                       (decoupled weight decay)
//   m = beta1 * m + (1 - beta1) * g
//   v = beta2 * v + (1 - beta2) * g^2
//   p -= lr / (1 - beta1^t) * m / (sqrt(v) / sqrt(1 - beta2^t) + eps)
#pragma once

#include <cstdint>

namespace moex::cpu {

struct AdamWConfig {
  double lr = 1e-3;
  double beta1 = 0.9;
  double beta2 = 0.999;
  double eps = 1e-8;
  double weight_decay = 1e-2;
  double grad_scale = 1.0;  // g = grad * grad_scale (gradient clipping or loss-scale undo, free)
};

// step is 1-based (the count after this update), as torch's state["step"].
// param P: T (float or double), or (T = float) uint16_t bf16 bits: a bf16 master (ZeRO-Offload
// with optimizer.master_dtype "bf16" steps the GPU's bf16 weights on the host), widened, stepped
// in fp32, then stored with stochastic rounding, the bits adam_weight_rounding_bits of the
// element's moment bits (core/stochastic_round.h), as the CUDA kernel does.
// grad G: T, or (T = float) uint16_t bf16 bits (optimizer.grads_dtype "bf16"), widened.
// param_bf16 (P = float only; may be null): also receives each updated weight rounded to bf16 in
// the same pass (core/dtype.h f32_to_bf16), as ZeRO-Offload's upload to the GPU needs it.
// Moments M: T, or (T = float) uint16_t bf16 bits: read as fp32, the update computed in fp32,
// then stored with stochastic rounding (core/stochastic_round.h).
template <typename P, typename G = P, typename M = G>
void adamw_step(P* param,       // [n]
                const G* grad,  // [n]
                M* exp_avg,     // [n], first moment m
                M* exp_avg_sq,  // [n], second moment v
                int64_t n, int64_t step, const AdamWConfig& config,
                uint16_t* param_bf16 = nullptr);  // [n]

}  // namespace moex::cpu
