// PR-MoE residual mix and the shared expert's gate (docs/architecture.md §MoE layer, stage 10),
// per token, bf16 rows with fp32 math. CPU twin: moe/moe_layer.cpp (LayerImpl::forward/backward,
// steps 10 and "shared expert").
//   forward:  c = softmax(x Wc^T) [T,2] (residual), g = sigmoid(x ws^T) [T] (shared gate, else 1)
//             y = (residual ? ym*c0 + r*c1 : ym) + (shared ? g*s : 0)
//   backward: dym = dy*c0, dr = dy*c1, ds = dy*g,
//             dcl = softmax'(c) (<dy,ym>, <dy,r>) [T,2],  dgl = <dy,s> g (1-g) [T]
// Pointers for an absent part are null (r/wc without residual, s without a shared expert, ws
// without its gate). Reductions run in a fixed order (one block per token): deterministic.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

namespace moex::cuda {

struct MixParams {
  int64_t num_tokens = 0, d = 0;
  const void* x = nullptr;    // [T,d] bf16 (layer input)
  const void* ym = nullptr;   // [T,d] bf16 MoE combine output
  const void* r = nullptr;    // [T,d] bf16 residual MLP output, or null
  const float* wc = nullptr;  // [2,d] residual coefficient weight (with r)
  const void* s = nullptr;    // [T,d] bf16 shared expert output, or null
  const float* ws = nullptr;  // [d] shared gate weight, or null (gate = 1)
  float* coef = nullptr;      // [T,2] softmax coefficients (with r)
  float* gate = nullptr;      // [T] shared gate values (with s)
};

// y [T,d] bf16 from p (writes coef and gate).
void moe_mix_forward(const MixParams& p, void* y, cudaStream_t stream);

// dy [T,d] bf16 -> dym (with r; else dy is the MoE part's gradient as is), dr (with r), ds (with
// s), dcl [T,2] (with r), dgl [T] (with ws). Reads p.ym, p.r, p.s, p.coef, p.gate.
void moe_mix_backward(const MixParams& p, const void* dy, void* dym, void* dr, void* ds, float* dcl,
                      float* dgl, cudaStream_t stream);

// dw [n,d] fp32 = coeff^T x with coeff [T,n] fp32 (n = 1 or 2), x [T,d] bf16: column sums over T
// in fixed-size chunks (partial [ceil(T/kMixChunk), n, d] fp32), then summed in chunk order.
constexpr int64_t kMixChunk = 256;
void mix_weight_grad(const float* coeff, const void* x, int64_t num_tokens, int64_t d, int n,
                     float* partial, float* dw, cudaStream_t stream);

// dx [T,d] bf16 += dxe (fp32 [T,d] or null) + dcl[t,0] wc[0] + dcl[t,1] wc[1] (with wc) +
// dgl[t] ws (with ws).
void mix_finish_dx(void* dx, const float* dxe, const float* dcl, const float* wc, const float* dgl,
                   const float* ws, int64_t num_tokens, int64_t d, cudaStream_t stream);

}  // namespace moex::cuda
