// Router stages around the fused gating kernel, fp32 (docs/architecture.md §Numerics). CPU twins
// in moe/router.h.
//   x [T,d] bf16   xj [T,d] fp32 router input   z [T,E] logits   s [T,E] scores
//   expert/slot/route_score/dgates [T*k]   aux_grad [E]   dz [T,E]
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "moe/moe_config.h"

namespace moex::cuda {

constexpr int kMaxTopK = 8;

// xj = float(x) * u with u[t,i] = 1 - eps + 2 eps U drawn as moe::router_jitter (eps = 0: a cast).
void router_input_bf16(const void* x, int64_t num_tokens, int64_t d, float eps, uint64_t seed,
                       uint64_t offset, float* xj, cudaStream_t stream);

struct RouterBackwardParams {
  int64_t num_tokens = 0;
  int num_experts = 0;
  int top_k = 1;
  ScoreFunc score_func = ScoreFunc::kSoftmax;
  bool renormalize = false;
  bool renormalize_after_drop = false;
  bool aux = false;  // aux loss present (type != kNone)
  float aux_coef = 0.0f;
  float z_coef = 0.0f;
};

// dz [T,E] (overwritten) = d/dz of (gates . dgates + aux_coef * aux + z_coef * zloss):
// router_gates_backward, router_aux_loss, router_scores_backward and router_z_loss in one pass per
// token. dgates of dropped routes (slot < 0) are ignored.
void router_backward(const float* z, const float* s, const int32_t* expert, const int32_t* slot,
                     const float* dgates, const float* aux_grad, const RouterBackwardParams& p,
                     float* dz, cudaStream_t stream);

}  // namespace moex::cuda
