// Multi-tensor AdamW over a model's flat buffers in one launch, and the global gradient norm.
// Matches cpu/adamw.h (torch.optim.AdamW, amsgrad off) per element:
//   g = grad * grad_scale;  p -= lr * wd * p;  m = b1 m + (1-b1) g;  v = b2 v + (1-b2) g^2;
//   p -= lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)
// Master weights fp32, or bf16 (optimizer.master_dtype, GPU only: read as fp32, the update stored
// with stochastic rounding); gradients fp32 or bf16; the moments fp32, or bf16 read as fp32 and
// stored with stochastic rounding (core/stochastic_round.h, the CPU twin's bits). The bf16 working
// copy the model computes with (of an fp32 master) is rewritten from the new master in the same
// pass.
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

namespace moex::cuda {

// One tensor of the flat buffers: elements [offset, offset + count), with its weight decay.
struct AdamWSegment {
  int64_t offset = 0;
  int64_t count = 0;
  float weight_decay = 0.0f;
};

// In double, as cpu::AdamWConfig: the kernel's fp32 coefficients are then rounded from the same
// values as the CPU twin's, so both give the same bits (which bf16 moments' rounding bits need).
struct AdamWStep {
  double lr = 1e-3, beta1 = 0.9, beta2 = 0.999, eps = 1e-8;
  int64_t step = 1;           // 1-based
  double grad_scale = 1.0;    // clipping coefficient (or 1)
  bool bf16_moments = false;  // exp_avg and exp_avg_sq hold bf16, else fp32
  bool bf16_grads = false;    // grad holds bf16, else fp32 (optimizer.grads_dtype)
  bool bf16_master = false;   // master holds bf16 and there is no working copy, else fp32
};

// segments: device array of num_segments entries (sorted by offset, disjoint). master (fp32, or
// bf16 with s.bf16_master), grad (fp32, or bf16 with s.bf16_grads), m, v (fp32, or bf16 with
// s.bf16_moments) and param_bf16 (null with a bf16 master; may be null otherwise) share the flat
// layout.
void adamw_multi_tensor(void* master, void* param_bf16, const void* grad, void* exp_avg,
                        void* exp_avg_sq, const AdamWSegment* segments, int num_segments,
                        const AdamWStep& s, cudaStream_t stream);

// out[0] = sum of grad[i]^2 over [0, n) (fp32, or bf16 when bf16), fp32 partials reduced in a
// fixed order into one double (deterministic). workspace: sum_of_squares_workspace_bytes(n)
// bytes; out is device memory.
size_t sum_of_squares_workspace_bytes(int64_t n);
void sum_of_squares(const void* grad, bool bf16, int64_t n, double* out, void* workspace,
                    cudaStream_t stream);

}  // namespace moex::cuda
