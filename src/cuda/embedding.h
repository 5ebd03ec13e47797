// Token (and learned position) embedding on bf16 tables. Twin: cpu/embedding.h.
// ids must lie in [0, vocab) (the op layer checks them on the host before they are uploaded).
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

namespace moex::cuda {

// out[i, :] = table[ids[i], :] (accumulate false) or out[i, :] += table[ids[i], :] (true).
// ids [n] i32, table [vocab, dim] bf16, out [n, dim] bf16. The table holds rows [first_row,
// first_row + vocab) of the whole one (all of it at 0; a tensor-parallel vocabulary slice
// otherwise), and ids outside them read zeros (twin: cpu::embedding_slice_forward).
void embedding_forward_bf16(const int32_t* ids, const void* table, int64_t n, int64_t vocab,
                            int64_t dim, void* out, bool accumulate, cudaStream_t stream,
                            int64_t first_row = 0);

// dtable[ids[i], :] += dout[i, :]; dout [n, dim] bf16, dtable [vocab, dim] fp32 (accumulated).
// Deterministic, no atomics: ids are sorted (stable radix sort) and each row of dtable receives its
// tokens' rows in token order, the same additions as the CPU twin (bit-identical to it).
// This form takes its scratch (embedding_backward_workspace_bytes) from the stream-ordered
// allocator (cudaMallocAsync / cudaFreeAsync on the stream); the second form takes it from the
// caller.
void embedding_backward_bf16(const int32_t* ids, const void* dout, int64_t n, int64_t vocab,
                             int64_t dim, float* dtable, cudaStream_t stream);
size_t embedding_backward_workspace_bytes(int64_t n, int64_t vocab);
void embedding_backward_bf16(const int32_t* ids, const void* dout, int64_t n, int64_t vocab,
                             int64_t dim, float* dtable, void* workspace, cudaStream_t stream);

}  // namespace moex::cuda
