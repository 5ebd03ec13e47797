// Moving token rows between token order and the expert buffer, bf16 rows of d (d % 8 == 0),
// fp32 accumulation. The plan arrays come from moe_gating (device):
//   gather [R] route held by buffer row (token = route / k), -1 = padding
//   row [T*k] buffer row of each route, -1 = dropped     gates [T*k] combine weights
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "cuda/padded_rows.h"

namespace moex::cuda {

// xb [R, d] = x[gather[r] / k] (zeros for padding rows). Rows outside `used`
// (cuda/padded_rows.h) are left unwritten, here and in moe_combine_backward.
void moe_permute(const void* x, const int32_t* gather, int64_t num_rows, int64_t d, int top_k,
                 void* xb, cudaStream_t stream, const PaddedRows& used = {});

// y [T, d] = sum_j gates[t*k+j] * ob[row[t*k+j]] over kept routes (zeros if none): the
// un-permute fused with the weighted combine.
void moe_combine(const void* ob, const int32_t* row, const float* gates, int64_t num_tokens,
                 int64_t d, int top_k, void* y, cudaStream_t stream);

// Backward of moe_combine, per buffer row r holding route q (token t):
//   dob[r] = gates[q] * dy[t] (zeros for padding),  dgates[q] = <dy[t], ob[r]>.
// dgates of dropped routes is left unwritten (consumers check the slot).
void moe_combine_backward(const void* dy, const void* ob, const int32_t* gather, const float* gates,
                          int64_t num_rows, int64_t d, int top_k, void* dob, float* dgates,
                          cudaStream_t stream, const PaddedRows& used = {});

// Backward of moe_permute plus the router's input gradient:
//   dx [T, d] = sum_j dxb[row[t*k+j]] (kept routes) + u[t] * dxj[t]
// where dxj [T, d] fp32 may be null and u is the jitter (eps = 0: u = 1) drawn as
// router_input_bf16.
void moe_permute_backward(const void* dxb, const int32_t* row, const float* dxj, int64_t num_tokens,
                          int64_t d, int top_k, float jitter_eps, uint64_t seed, uint64_t offset,
                          void* dx, cudaStream_t stream);

}  // namespace moex::cuda
