// LayerNorm and RMSNorm over the last dimension of bf16 rows x [rows, dim], fp32 statistics and
// math. Per-head q/k norm is the same call on a [tokens * heads, head_dim] view. Twin: cpu/norm.h.
// Backward writes dx (bf16, may alias dy) and accumulates (+=) the fp32 parameter gradients; the
// column sums for dweight/dbias are reduced in a fixed order (deterministic).
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

namespace moex::cuda {

// Scratch for the backward kernels' per-block partial column sums, in bytes.
size_t norm_backward_workspace_bytes(int64_t rows, int64_t dim);

// y = (x - mean) * rstd * w + b; w [dim] bf16, b [dim] bf16 or null; mean/rstd [rows] fp32 saved.
void layernorm_forward_bf16(const void* x, const void* w, const void* b, int64_t rows,
                            int64_t dim, float eps, void* y, float* mean, float* rstd,
                            cudaStream_t stream);
// dw, db [dim] fp32 accumulated (db null when the layer has no bias).
void layernorm_backward_bf16(const void* dy, const void* x, const void* w, const float* mean,
                             const float* rstd, int64_t rows, int64_t dim, void* dx, float* dw,
                             float* db, void* workspace, cudaStream_t stream);

// y = x * rstd * w, rstd = 1 / sqrt(mean(x^2) + eps); rstd [rows] fp32 saved.
void rmsnorm_forward_bf16(const void* x, const void* w, int64_t rows, int64_t dim, float eps,
                          void* y, float* rstd, cudaStream_t stream);
// The residual add and the next norm in one pass: sum = x + res (bf16, rounded as add_bf16),
// then the norm above (RMSNorm when rms; b may be null) of sum. Same bits as add_bf16 and the norm
// run one after the other. sum must not alias x, res or y.
void add_norm_forward_bf16(bool rms, const void* x, const void* res, const void* w, const void* b,
                           int64_t rows, int64_t dim, float eps, void* sum, void* y, float* mean,
                           float* rstd, cudaStream_t stream);
void rmsnorm_backward_bf16(const void* dy, const void* x, const void* w, const float* rstd,
                           int64_t rows, int64_t dim, void* dx, float* dw, void* workspace,
                           cudaStream_t stream);

}  // namespace moex::cuda
