// The router (gating), docs/architecture.md §MoE layer stages 1, 2 and 4, as separately callable
// stages on raw pointers so the CUDA path can mirror each one and be checked against it.
//
// Legend: T tokens, d hidden, E experts, k experts per token.
//   x [T,d]  xj [T,d] (jittered router input)  u [T,d] (jitter factors)  wg [E,d]
//   z [T,E] logits   s [T,E] scores (softmax or sigmoid)   topk_idx [T,k] int32
//   slot [T,k] int32 (-1 = dropped, from the dispatch plan)   gates [T,k] combine weights
//
// Forward order: router_jitter -> router_logits -> router_scores -> router_select ->
// (dispatch plan) -> router_gates; router_aux_loss and router_z_loss read s/z and the selection.
// Backward order: router_gates_backward and router_aux_loss (add into ds) -> router_scores_backward
// and router_z_loss (add into dz) -> router_logits_backward.
#pragma once

#include <cstdint>

#include "core/rng.h"
#include "moe/moe_config.h"

namespace moex::moe {

// Random streams of one MoE layer call: the Philox offset of a use is offset * 4 + use, and the
// draw index is given with each function. The GPU draws the same numbers from the same formula.
enum class MoERngUse : uint64_t { kJitter = 0, kGumbel = 1, kRts = 2 };
MOEX_HD uint64_t moe_rng_offset(uint64_t offset, MoERngUse use) {
  return offset * 4 + static_cast<uint64_t>(use);
}

// Multiplicative jitter: u[t,i] = U(1-eps, 1+eps) drawn at index t*d+i; xj = x * u.
template <typename T>
void router_jitter(const T* x, int64_t num_tokens, int64_t d, float eps, uint64_t seed,
                   uint64_t offset, T* u, T* xj);

// z [T,E] = xj [T,d] . wg[E,d]^T
template <typename T>
void router_logits(const T* xj, const T* wg, int64_t num_tokens, int64_t d, int64_t num_experts,
                   T* z);

// s = softmax(z) over experts, or sigmoid(z) element-wise.
template <typename T>
void router_scores(const T* z, int64_t num_tokens, int64_t num_experts, ScoreFunc score_func, T* s);

struct RouterSelectParams {
  int top_k = 1;
  ScoreFunc score_func = ScoreFunc::kSoftmax;
  bool rsample = false;  // top-1: argmax(z + Gumbel) (pass true only in training)
  bool gumbel_second_expert =
      false;  // top-2: 2nd = argmax over e != 1st of (z + Gumbel) (training)
  uint64_t seed = 0;
  uint64_t offset =
      0;  // the layer call's offset; Gumbel draws use moe_rng_offset(offset, kGumbel), index t*E+e
};

// topk_idx [T,k]: the k experts with the highest selection key, best first; ties go to the lower
// expert id. Key: s (softmax), s + bias (sigmoid; bias [E] may be null), or the Gumbel rules above.
template <typename T>
void router_select(const T* z, const T* s, const T* bias, int64_t num_tokens, int64_t num_experts,
                   const RouterSelectParams& params, int32_t* topk_idx);

// gates [T,k] = s[t, topk_idx[t,j]], 0 where slot == -1 (dropped); with renormalize, divided by
// the sum over the selected routes (or over the kept ones only, with after_drop) clamped at eps.
// slot may be null (nothing dropped).
struct RouterGateParams {
  bool renormalize = false;
  bool after_drop = false;
};
template <typename T>
void router_gates(const T* s, const int32_t* topk_idx, const int32_t* slot, int64_t num_tokens,
                  int64_t num_experts, int top_k, const RouterGateParams& params, T* gates);
// ds [T,E] += d(gates)/d(s)^T dgates.
template <typename T>
void router_gates_backward(const T* s, const int32_t* topk_idx, const int32_t* slot,
                           const T* dgates, int64_t num_tokens, int64_t num_experts, int top_k,
                           const RouterGateParams& params, T* ds);

// Load-balancing loss on the pre-drop selection, A * sum_e P_e * f_e with P_e = mean_t p[t,e]:
//   DeepSpeed k=1: A = E,     f = first-choice fraction
//   DeepSpeed k=2: A = E,     f = first-choice fraction (top2gating: mean(me*ce)*E*E)
//   DeepSpeed k>2: A = E/k,   f = fraction over all k choices (E^2/k * mean_e(P_e f_e))
//   Mixtral (HF load_balancing_loss_func): A = E, f = fraction over all k choices
// p = s for softmax; p = s / sum_e s for sigmoid (normalized affinities, DeepSeek-V3 style).
// Returns the unweighted loss; when ds is non-null adds coef * dloss/ds into it.
template <typename T>
double router_aux_loss(const T* s, const int32_t* topk_idx, int64_t num_tokens, int64_t num_experts,
                       int top_k, AuxLossType type, ScoreFunc score_func, double coef, T* ds);

// z-loss mean_t(logsumexp(z_t)^2), unweighted; when dz is non-null adds coef * dloss/dz into it.
template <typename T>
double router_z_loss(const T* z, int64_t num_tokens, int64_t num_experts, double coef, T* dz);

// dz [T,E] += ds through softmax or sigmoid (s is the forward output).
template <typename T>
void router_scores_backward(const T* s, const T* ds, int64_t num_tokens, int64_t num_experts,
                            ScoreFunc score_func, T* dz);

// dwg [E,d] = dz^T xj (overwritten); dx [T,d] += (dz wg) * u  (u null: no jitter).
template <typename T>
void router_logits_backward(const T* dz, const T* xj, const T* wg, const T* u, int64_t num_tokens,
                            int64_t d, int64_t num_experts, T* dwg, T* dx);

}  // namespace moex::moe
