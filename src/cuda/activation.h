// Expert activations on bf16 rows, fp32 math. Shapes (row-major):
//   GELU:   h [rows, F]  -> a [rows, F];    backward (h, da [rows, F]) -> dh [rows, F]
//   SwiGLU: h [rows, 2F] (gate columns 0..F-1, then up F..2F-1) -> a [rows, F] = silu(gate) * up;
//           backward (h, da [rows, F]) -> dh [rows, 2F]
// The backward kernels also write the forward's a again when `a` is not null, bit for bit the
// forward's, and `a` may be da itself (overwritten): a layer then need not keep a for its weight
// gradient dw2 = dout^T a, which it computes after the activation backward (docs/gpu-model.md).
// F must be a multiple of 8 (16-byte vectors). Twins: cpu/activation.h. `used` limits the rows
// computed to those an expert uses (cuda/padded_rows.h); by default every row.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "cuda/padded_rows.h"

namespace moex::cuda {

void gelu_forward_bf16(const void* h, void* a, int64_t rows, int64_t ffn, bool exact,
                       cudaStream_t stream, const PaddedRows& used = {});
void gelu_backward_bf16(const void* h, const void* da, void* dh, void* a, int64_t rows, int64_t ffn,
                        bool exact, cudaStream_t stream, const PaddedRows& used = {});
void swiglu_forward_bf16(const void* h, void* a, int64_t rows, int64_t ffn, cudaStream_t stream,
                         const PaddedRows& used = {});
void swiglu_backward_bf16(const void* h, const void* da, void* dh, void* a, int64_t rows,
                          int64_t ffn, cudaStream_t stream, const PaddedRows& used = {});

// Conversions used at the layer boundary and by tests: n elements, any n.
void f32_to_bf16(const float* src, void* dst, int64_t n, cudaStream_t stream);
void bf16_to_f32(const void* src, float* dst, int64_t n, cudaStream_t stream);

}  // namespace moex::cuda
