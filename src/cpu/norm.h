// LayerNorm and RMSNorm over the last dimension of x [num_rows, dim].
// Forward saves per-row statistics for backward. Backward writes dx and accumulates (+=) the
// parameter gradients, so several micro-batches can add into one gradient buffer.
#pragma once

#include <cstdint>

namespace moex::cpu {

// y = (x - mean) * rstd * weight + bias, rstd = 1 / sqrt(var + eps) (biased variance, as torch).
// bias may be null (no bias).
template <typename T>
void layernorm_forward(const T* x,       // [num_rows, dim]
                       const T* weight,  // [dim]
                       const T* bias,    // [dim] or null
                       int64_t num_rows, int64_t dim, T eps,
                       T* y,      // [num_rows, dim]
                       T* mean,   // [num_rows], saved for backward
                       T* rstd);  // [num_rows], saved for backward

// dbias may be null (and must be when the layer has no bias); dx may alias dy.
template <typename T>
void layernorm_backward(const T* dy,      // [num_rows, dim]
                        const T* x,       // [num_rows, dim]
                        const T* weight,  // [dim]
                        const T* mean,    // [num_rows]
                        const T* rstd,    // [num_rows]
                        int64_t num_rows, int64_t dim,
                        T* dx,       // [num_rows, dim], written
                        T* dweight,  // [dim], accumulated
                        T* dbias);   // [dim] or null, accumulated

// y = x * rstd * weight, rstd = 1 / sqrt(mean(x^2) + eps) (Llama/Mixtral RMSNorm).
template <typename T>
void rmsnorm_forward(const T* x,       // [num_rows, dim]
                     const T* weight,  // [dim]
                     int64_t num_rows, int64_t dim, T eps,
                     T* y,      // [num_rows, dim]
                     T* rstd);  // [num_rows], saved for backward

// dx may alias dy.
template <typename T>
void rmsnorm_backward(const T* dy,      // [num_rows, dim]
                      const T* x,       // [num_rows, dim]
                      const T* weight,  // [dim]
                      const T* rstd,    // [num_rows]
                      int64_t num_rows, int64_t dim,
                      T* dx,        // [num_rows, dim], written
                      T* dweight);  // [dim], accumulated

}  // namespace moex::cpu
