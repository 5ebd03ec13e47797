// Embedding lookup (token ids, or positions for learned position embeddings) and its gradient.
// ids are i32 on the host, checked to lie in [0, vocab) there before anything runs (on a GPU
// model they are then copied to the device), or i32 already on the table's GPU, which the caller
// has checked (a serving step uploads its ids with its other indices). table and y in the compute
// dtype; dtable fp32.
#pragma once

#include "core/tensor.h"

namespace moex::ops {

// y[i] = table[ids[i]] (accumulate false) or y[i] += table[ids[i]] (true).
void embedding(const Tensor& ids,    // [N] i32, CPU (or checked, on the table's GPU)
               const Tensor& table,  // [V, d]
               const Tensor& y,      // [N, d]
               bool accumulate);
// Tensor parallelism's vocabulary slice: table holds rows [first_row, first_row + V) of the whole
// one; y[i] = table[ids[i] - first_row] for the ids among them, zeros for the others. ids on the
// host or on the table's GPU, checked against the whole vocabulary by the caller.
void embedding_slice(const Tensor& ids,    // [N] i32
                     const Tensor& table,  // [V, d], this rank's rows
                     int64_t first_row,
                     const Tensor& y);  // [N, d]
// dtable[ids[i]] += dy[i].
void embedding_backward(const Tensor& ids, const Tensor& dy, const Tensor& dtable);

}  // namespace moex::ops
