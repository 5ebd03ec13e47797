// Causal grouped-query attention of the training shape (start_pos 0, q_len == kv_len) through
// cuDNN's fused flash attention (its SDPA graphs, built with the cuDNN frontend headers in
// third_party/cudnn_frontend), as the alternative engine behind cuda/attention.h: the same
// layouts, the same lse (natural log of the sum of exp(scale * q.k) over the visible keys), so
// either engine's backward takes either's forward. docs/gpu-model.md §Attention through cuDNN.
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <string>

#include "cuda/attention.h"

namespace moex::cuda {

// Opens libcudnn (once) for the cuDNN frontend, which reaches it through this process-wide handle;
// false, with the reason in `why`, where it cannot be loaded. Other cuDNN users in moex
// (benchmarks) call it before building graphs.
bool cudnn_library_open(std::string* why = nullptr);

// True when cuDNN runs this shape: the library loaded, and its forward and backward graphs for
// the shape built (once per shape; a shape it refuses is logged once and left to the own kernels).
bool cudnn_attention_supports(const AttentionParams& p);

// The engines' entry points; each needs cudnn_attention_supports(p).
void cudnn_attention_forward(const void* q, const void* k, const void* v, void* out, float* lse,
                             const AttentionParams& p, cudaStream_t stream);
size_t cudnn_attention_backward_workspace_bytes(const AttentionParams& p);
void cudnn_attention_backward(const void* dout, const void* q, const void* k, const void* v,
                              const void* out, const float* lse, void* dq, void* dk, void* dv,
                              void* workspace, const AttentionParams& p, cudaStream_t stream);

}  // namespace moex::cuda
