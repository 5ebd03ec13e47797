// The fused gating kernel (docs/architecture.md §MoE layer, stages 2-5 in one launch): scores,
// top-k selection, drop policy, slots, per-expert loads/counts/offsets, the dispatch table and the
// aux/z-loss statistics.
// CPU twins: moe/router.h (router_scores, router_select, router_gates, router_aux_loss,
// router_z_loss) and moe/dispatch_plan.h (build_dispatch_plan); the decisions are identical.
//
// Legend: T tokens, E experts, k choices, route r = t*k + j, R buffer rows.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "moe/moe_config.h"

namespace moex::cuda {

struct GatingParams {
  int64_t num_tokens = 0;  // T
  int num_experts = 0;     // E (<= kMaxGatingExperts)
  int top_k = 1;           // k (<= kMaxGatingTopK)
  ScoreFunc score_func = ScoreFunc::kSoftmax;
  bool rsample = false;               // training only (caller decides)
  bool gumbel_second_expert = false;  // training only
  bool renormalize = false;
  bool renormalize_after_drop = false;
  DropPolicy policy = DropPolicy::kPosition;
  bool dropless = false;
  bool padded = true;    // rows [E, C, d] (true) or packed [T*k, d] (dropless only)
  // Packed: each expert's rows start at a multiple of this (its count rounded up; the rows
  // between are padding, gather -1), so per-expert GEMMs see row counts in steps of it.
  int row_align = 1;
  int64_t capacity = 0;  // C when !dropless; with dropless && padded C = the largest load
  AuxLossType aux_loss_type = AuxLossType::kDeepSpeed;
  uint64_t seed = 0, offset = 0;  // Philox streams as moe/router.h: moe_rng_offset(offset, use)
  bool one_block_ok = true;  // false: always the grid kernel (tests compare it with the one block)
};

// Device outputs of the gating kernel (the dispatch plan on the device).
struct GatingOutputs {
  float* scores = nullptr;       // [T, E] softmax or sigmoid scores (backward needs them)
  int32_t* expert = nullptr;     // [T*k] selected expert per route
  float* route_score = nullptr;  // [T*k] s[t, expert] (probs-policy key)
  int32_t* slot = nullptr;       // [T*k] slot in the expert, -1 = dropped
  int32_t* row = nullptr;        // [T*k] buffer row, -1 = dropped
  float* gates = nullptr;        // [T*k] combine weights (0 for dropped routes)
  int32_t* gather = nullptr;     // [max_rows] route held by each buffer row, -1 = padding
  int32_t* load = nullptr;       // [E] routes selected per expert (before dropping)
  int32_t* counts = nullptr;     // [E] routes kept per expert
  int32_t* offsets = nullptr;    // [E+1] first row of each expert; offsets[E] = rows
  int32_t* info = nullptr;       // [4] capacity used, rows, dropped routes, largest load
  double* losses = nullptr;      // [2] aux loss (unweighted), z-loss (unweighted)
  float* aux_grad = nullptr;     // [E] d(aux)/d p[t,e] = A * f_e / T (unweighted)
};

constexpr int kMaxGatingExperts = 512;
constexpr int kMaxGatingTopK = 8;  // = kMaxTopK (moe_router.h)
// Up to this many tokens, when no route can be dropped (dropless, or capacity >= T: a token picks
// an expert once), one block computes the plan instead of the grid kernel and its last-block
// hand-off (decoding); the outputs are the same bits.
constexpr int kGatingFewTokens = 32;

// Scratch the kernel needs (bytes); pass it zero-initialized once (its counter resets itself).
size_t gating_workspace_bytes(int64_t num_tokens, int num_experts, int top_k);
// Rows the buffer can need: E*C (padded capacity), T*k + E*(row_align-1) (packed), E*T worst case
// (dropless padded).
int64_t gating_max_rows(const GatingParams& p);

// logits [T, E] fp32 (device), bias [E] or null (sigmoid selection bias). max_rows bounds gather.
void moe_gating(const float* logits, const float* bias, const GatingParams& params,
                const GatingOutputs& out, int64_t max_rows, void* workspace, cudaStream_t stream);

// The router and the gating in one launch for a few tokens without router jitter (decoding):
// logits [T, E] = x [T, d] bf16 . w [E, d] fp32, each an fp32 sum in a fixed order (not cuBLAS's,
// so a logit may differ from the SGEMM path's in its last bits), written to `logits`, then
// moe_gating's decisions on them. Needs moe_router_gating_fits: the one-block case above, d % 8 ==
// 0 and 16-byte aligned x and w.
bool moe_router_gating_fits(const GatingParams& params, int64_t d, const void* x, const float* w);
void moe_router_gating(const void* x, const float* w, int64_t d, float* logits, const float* bias,
                       const GatingParams& params, const GatingOutputs& out, int64_t max_rows,
                       void* workspace, cudaStream_t stream);

}  // namespace moex::cuda
