// The router's three fp32 products in training, for up to kRouterGemmMaxExperts experts
// (docs/gpu-moe.md §Router products). With so few output columns cuBLAS's SGEMM picks small FFMA
// tiles and reads the [T, d] operand at a fraction of the memory's speed; these kernels read it
// once at full width and keep every sum in fp32 with no TF32, in a fixed order that depends on
// the shape alone (deterministic, and a checkpointed recompute repeats the logits bit for bit).
//   xj [T, d] fp32 router input   w [E, d] fp32 router weight   z, dz [T, E] fp32
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

namespace moex::cuda {

constexpr int kRouterGemmMaxExperts = 16;

// Whether these kernels take the shape: 1 <= E <= kRouterGemmMaxExperts, d a multiple of 4 and
// every pointer 16-byte aligned. Otherwise the caller takes cuBLAS.
bool router_gemm_fits(int64_t d, int num_experts, const void* xj, const void* w, const void* out);

// z = xj w^T.
void router_logits_f32(const float* xj, const float* w, int64_t num_tokens, int64_t d,
                       int num_experts, float* z, cudaStream_t stream);

// dw = dz^T xj (overwritten), summed over tokens in fixed chunks: `partial` holds
// router_weight_grad_partial_floats(T, d, E) floats of scratch.
int64_t router_weight_grad_partial_floats(int64_t num_tokens, int64_t d, int num_experts);
void router_weight_grad_f32(const float* dz, const float* xj, int64_t num_tokens, int64_t d,
                            int num_experts, float* partial, float* dw, cudaStream_t stream);

// dxj = dz w (overwritten).
void router_input_grad_f32(const float* dz, const float* w, int64_t num_tokens, int64_t d,
                           int num_experts, float* dxj, cudaStream_t stream);

}  // namespace moex::cuda
