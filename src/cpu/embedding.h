// Token embedding: gather rows of the table by id (forward), scatter-add into its gradient
// (backward).
#pragma once

#include <cstdint>

namespace moex::cpu {

// out[i, :] = weight[ids[i], :]. An id outside [0, vocab_size) is an error naming the id and its
// position.
template <typename T>
void embedding_forward(const int32_t* ids,  // [num_tokens]
                       const T* weight,     // [vocab_size, dim]
                       int64_t num_tokens, int64_t vocab_size, int64_t dim,
                       T* out);  // [num_tokens, dim]

// Tensor parallelism's vocabulary slice: weight holds rows [first_row, first_row + rows) of the
// whole table; out[i, :] = weight[ids[i] - first_row, :] for the ids among them, zeros for the
// others. ids are checked against the whole vocabulary by the caller.
template <typename T>
void embedding_slice_forward(const int32_t* ids,  // [num_tokens]
                             const T* weight,     // [rows, dim]
                             int64_t num_tokens, int64_t first_row, int64_t rows, int64_t dim,
                             T* out);  // [num_tokens, dim]

// dweight[ids[i], :] += dout[i, :] (accumulates, so call it once per micro-batch on the same
// buffer). Deterministic: each thread owns a block of columns and visits tokens in order.
template <typename T>
void embedding_backward(const int32_t* ids,  // [num_tokens]
                        const T* dout,       // [num_tokens, dim]
                        int64_t num_tokens, int64_t vocab_size, int64_t dim,
                        T* dweight);  // [vocab_size, dim], accumulated

}  // namespace moex::cpu
