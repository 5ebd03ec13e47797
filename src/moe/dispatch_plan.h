// The dispatch plan (docs/architecture.md §MoE layer, stages 3 and 5): a mapping table from
// routes to rows of the expert buffer, never one-hot einsums. A route is one (token t, choice j),
// index r = t*k + j.
//
// Buffer layouts:
//   padded (capacity mode): [E, C, d]; expert e's slot c is row e*C + c; rows past counts[e] are
//   padding. packed (dropless):      [sum(counts), d]; expert e's rows are offsets[e] ..
//   offsets[e]+counts[e]-1.
// Both are described by offsets[e] (first row of e) and counts[e] (rows that hold tokens).
#pragma once

#include <cstdint>
#include <vector>

#include "moe/moe_config.h"

namespace moex::moe {

struct DispatchPlan {
  int64_t num_tokens = 0;
  int64_t num_experts = 0;
  int top_k = 0;
  int64_t capacity = 0;  // C: slots per expert (dropless: the largest load)
  bool padded = true;    // [E, C, d] (true) or [sum(counts), d] (false)

  std::vector<int32_t> expert;   // [T*k] expert of each route (the selection)
  std::vector<int32_t> slot;     // [T*k] slot within its expert, -1 = dropped
  std::vector<int32_t> row;      // [T*k] buffer row (offsets[e] + slot), -1 = dropped
  std::vector<int64_t> load;     // [E] routes selected per expert, before dropping
  std::vector<int64_t> counts;   // [E] routes kept per expert
  std::vector<int64_t> offsets;  // [E+1] first buffer row of each expert; offsets[E] = num_rows
  std::vector<int32_t>
      gather;  // [num_rows] route r held by each buffer row (token = r / k), -1 = padding
  int64_t num_dropped = 0;

  int64_t num_rows() const { return offsets.empty() ? 0 : offsets.back(); }
  int64_t num_kept() const { return num_tokens * top_k - num_dropped; }
};

struct DispatchParams {
  int64_t capacity = 0;  // C from moe_capacity(); ignored when dropless
  bool dropless = false;
  DropPolicy policy = DropPolicy::kPosition;
  uint64_t seed =
      0;  // rts: key of route r is philox_uniform(seed, moe_rng_offset(offset, kRts), r)
  uint64_t offset = 0;
};

// Builds the plan from the selection topk_idx [T,k]. route_score [T*k] (the score of each
// selected route) ranks routes under the `probs` policy and may be null otherwise.
//   position: slots in cumulative order, choice-major: every token's first choice is placed before
//             any second choice (DeepSpeed top2gating's locations2 += sum(mask1)), and so on for k
//             > 2.
//   probs:    each expert keeps its C highest-scoring routes (ties: earlier in position order).
//   rts:      each expert keeps C of its routes chosen uniformly at random (the C largest Philox
//   keys).
// Under probs and rts the kept routes take slots in token order (DeepSpeed: cumsum of the mask).
template <typename T>
void build_dispatch_plan(const int32_t* topk_idx, const T* route_score, int64_t num_tokens,
                         int64_t num_experts, int top_k, const DispatchParams& params,
                         DispatchPlan* plan);

}  // namespace moex::moe
