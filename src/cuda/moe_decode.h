// The experts of an MoE layer for a few tokens (decoding), docs/gpu-model.md §Decoding: each
// selected expert's weights are read once per call however many of the tokens chose it, the other
// experts' weights not at all, and the row counts stay on the device, so nothing waits for the
// host (CUDA-graph safe). The GEMM path instead runs batched GEMMs over [E, C] rows, which read
// every expert's weights and need C on the host.
//
// Rows follow moe_gating's padded layout: expert e's routes sit at buffer rows e*C + s where
// gather[e*C + s] >= 0 (the route; its token is route / k), and C = info[0].
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

namespace moex::cuda {

// The largest C (so the largest token count) the decode kernels take.
constexpr int kMaxDecodeCapacity = 64;

struct MoEDecodeParams {
  const void* x = nullptr;          // [T, d] bf16, token order
  const int32_t* gather = nullptr;  // [E * C] route of each buffer row, -1 = padding
  const int32_t* counts = nullptr;  // [E] kept routes per expert (0: the expert is skipped)
  const int32_t* info = nullptr;    // info[0] = C
  const void* w1 = nullptr;         // [E, F1, d] bf16 (SwiGLU: the F gate rows, then the F up rows)
  const void* w2 = nullptr;         // [E, d, F] bf16
  // C may exceed T in capacity mode (min_capacity): a and out hold E * C rows.
  void* a = nullptr;    // [E * C, F] bf16 scratch, rows e*C + s
  void* out = nullptr;  // [E * C, d] bf16, rows e*C + s (moe_combine reads them)
  int64_t num_tokens = 0, d = 0, f = 0;
  int num_experts = 0, top_k = 1;
  bool swiglu = true;  // else GELU
  bool gelu_exact = false;
};

// a = act(x W1[e]^T), then out = a W2[e]^T, for every routed row; h is rounded to bf16 before the
// activation and a is stored in bf16, as on the GEMM path. d and F must be multiples of 8 and
// T <= kMaxDecodeCapacity.
void moe_decode_experts(const MoEDecodeParams& p, cudaStream_t stream);

}  // namespace moex::cuda
